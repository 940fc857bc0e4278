#!/usr/bin/env bash
# Creates or updates the virtual environment used by `make demo` / `make test`.
#
#   VENV     where the environment lives (default .venv)
#   PYTHON   interpreter that creates it (default python3.11, then python3)
#
# detectron2 has no release on PyPI under its own name. If the interpreter that creates the venv
# can already import detectron2 (for example your own CUDA build), the venv is created with
# --system-site-packages and that detectron2 and its torch are kept. Otherwise the Python code of
# PyPI's sal-detectron2==0.7.2 (upstream detectron2, unchanged) is installed into the venv; it has
# no compiled ops for Python 3.11, which PLRC pre-training, Mask/Faster R-CNN and COCO evaluation
# do not need.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [ -z "${PYTHON:-}" ]; then
  PYTHON=$(command -v python3.11 || command -v python3)
fi

system_d2=0
if "$PYTHON" -c "import detectron2" >/dev/null 2>&1; then
  system_d2=1
fi

if [ ! -x "$VENV/bin/python" ]; then
  if [ "$system_d2" = 1 ]; then
    echo "[setup] $PYTHON already imports detectron2: creating $VENV with --system-site-packages to keep it"
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    echo "[setup] creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
  fi
fi
VPY="$VENV/bin/python"
"$VPY" -m pip install --quiet --upgrade "pip>=23" wheel

# A detectron2 that the venv imports from outside the venv is the user's own build: keep it.
D2_PROBE='import os, sys
try:
    import detectron2
except Exception:
    print(0)
else:
    venv = os.path.realpath(sys.argv[1])
    print(int(not os.path.realpath(detectron2.__file__).startswith(venv + os.sep)))'
keep_d2=$("$VPY" -c "$D2_PROBE" "$VENV" 2>/dev/null || echo 0)

if [ "$keep_d2" = 1 ] && "$VPY" -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "[setup] keeping the torch/torchvision that the existing detectron2 was built against"
  "$VPY" -m pip install --quiet -r requirements/base.txt
else
  # PyPI's torch for Linux x86-64 is a CUDA build: ~5.5 GB in the venv. Say so before pip runs out of disk halfway.
  free_kb=$(df -Pk "$VENV" | awk 'NR == 2 {print $4}')
  if [ -n "$free_kb" ] && [ "$free_kb" -lt $((6 * 1024 * 1024)) ]; then
    echo "[setup] warning: $((free_kb / 1024)) MB free under $VENV; torch + torchvision need about 6 GB" >&2
  fi
  echo "[setup] installing requirements/torch.txt and requirements/base.txt"
  "$VPY" -m pip install --quiet -r requirements/torch.txt -r requirements/base.txt
fi

if [ "$keep_d2" = 0 ] && ! "$VPY" -c "import detectron2" >/dev/null 2>&1; then
  SITE=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  echo "[setup] installing detectron2's Python code (sal-detectron2==0.7.2) into $SITE"
  "$VPY" -m pip install --quiet --no-deps --only-binary=:all: --python-version 3.10 \
      --target "$SITE" --upgrade sal-detectron2==0.7.2
fi

echo "[setup] installing plrc_d2 (editable)"
"$VPY" -m pip install --quiet --no-deps --no-build-isolation -e .
"$VPY" -m plrc_d2.env_info
