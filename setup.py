#!/usr/bin/env python
"""plrc_d2: Point-Level Region Contrast pre-training as a Detectron2 extension.

detectron2 is a prerequisite that is not listed in install_requires: it has no release on PyPI under
its own name. `make test` / `make demo` (tools/setup_env.sh) install it; see README.md.
"""
from setuptools import find_packages, setup

setup(
    name="plrc_d2",
    version="0.1.0",
    description="Point-Level Region Contrast (CVPR 2022) pre-training for Detectron2",
    packages=find_packages(include=["plrc_d2", "plrc_d2.*"]),
    # the CPU distillation kernel's C source, compiled on first use (plrc_d2/modeling/native.py)
    package_data={"plrc_d2.modeling": ["csrc/*.c"]},
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.0",
        "torchvision",
        "fvcore>=0.1.5,<0.1.6",
        "pycocotools",
        "opencv-python-headless",
        "scikit-image",
        "numpy<2",
    ],
)
