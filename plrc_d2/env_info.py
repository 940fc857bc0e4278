"""Prints which torch and detectron2 this environment uses: `python -m plrc_d2.env_info`."""
import os


def describe() -> str:
    import torch
    import detectron2

    try:
        from detectron2 import _C  # noqa: F401

        ops = "compiled ops present"
    except ImportError:
        ops = "no compiled ops (Python-only build: deformable conv and rotated boxes unavailable)"
    from plrc_d2.modeling.native import distill_kernel_status

    return (
        f"torch {torch.__version__} (CUDA available: {torch.cuda.is_available()})\n"
        f"detectron2 {detectron2.__version__} at {os.path.dirname(detectron2.__file__)}: {ops}\n"
        f"plrc_d2 compiled CPU distillation kernel: {distill_kernel_status()}"
    )


if __name__ == "__main__":
    print(describe())
