"""tools/train_net.py --num-gpus 2 on a CPU-only machine: two gloo processes train the same model."""
import os
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_process_cpu_pretraining(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (72, 96, 3), dtype=np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "out"
    cmd = [sys.executable, "tools/train_net.py", "--config-file", "configs/quick_schedules/plrc_R_18_quick.yaml",
           "--num-gpus", "2", "--dist-url", "tcp://127.0.0.1:29531", "DATASETS.TRAIN", f'("folder:{images}",)',
           "SOLVER.MAX_ITER", "2", "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert state["iteration"] == 1
    assert any(k.startswith("momentum_encoder.") for k in state["model"])
