"""Exact resume: a tools/train_net.py run SIGKILLed after a checkpoint and resumed with --resume ends in the
same state as an uninterrupted run (online and momentum encoders, BN statistics, queue + pointer, centre).

Tolerance: 1e-6 absolute (in practice the states are bit-identical on CPU with one thread). Data order is
the loader's stream, a pure function of (SEED, sample position), restarted at the resumed iteration.
"""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

MAX_ITER = 10  # long enough that the killed run cannot finish between checkpoint and kill on a busy machine
CONFIG = "configs/quick_schedules/plrc_R_18_quick.yaml"


def _images(folder):
    from PIL import Image

    rng = np.random.default_rng(0)
    os.makedirs(folder)
    for i in range(6):
        img = np.zeros((72, 96, 3), np.uint8) + rng.integers(0, 255, 3, dtype=np.uint8)
        img[10 + 5 * i: 50, 20: 70 - 4 * i] = rng.integers(0, 255, 3, dtype=np.uint8)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(folder, f"img{i}.png"))


def _cmd(output_dir, data_dir, resume=False):
    return [sys.executable, "tools/train_net.py", "--config-file", CONFIG] + (["--resume"] if resume else []) + [
        "DATASETS.TRAIN", f"('folder:{data_dir}',)", "OUTPUT_DIR", str(output_dir), "SOLVER.MAX_ITER", str(MAX_ITER),
        "SOLVER.CHECKPOINT_PERIOD", "2", "SEED", "3", "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0",
        "INPUT.PLRC.CROP_SIZE", "32", "MODEL.PLRC.MAP_SIZE", "6"]


def _env(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", DETECTRON2_DATASETS=str(tmp_path / "ds"))
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    return env


def _run(cmd, env):
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def _kill_after_first_checkpoint(cmd, env, output_dir):
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tag = output_dir / "last_checkpoint"
    deadline = time.time() + 240
    while not tag.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert tag.exists(), "the run ended or timed out before writing a checkpoint"
    assert not (output_dir / "model_final.pth").exists(), "the run finished before it could be killed"
    return tag.read_text().strip()


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    data = tmp_path / "images"
    _images(str(data))
    env = _env(tmp_path)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _run(_cmd(straight, data), env)
    stopped_at = _kill_after_first_checkpoint(_cmd(killed, data), env, killed)
    log = _run(_cmd(killed, data, resume=True), env)
    assert f"Starting training from iteration {int(stopped_at[6:13]) + 1}" in log  # resumed, not restarted

    a, b = _state(straight / "model_final.pth"), _state(killed / "model_final.pth")
    assert a["iteration"] == b["iteration"] == MAX_ITER - 1
    keys = set(a["model"])
    assert keys == set(b["model"])
    for must in ("queue.queue", "queue.ptr", "center"):
        assert must in keys
    assert any(k.startswith("momentum_encoder.") for k in keys)
    worst = max((a["model"][k].double() - b["model"][k].double()).abs().max().item() for k in keys)
    assert worst <= 1e-6, f"resumed run (killed after {stopped_at}) differs by {worst}"
    # the run did move: the state is not the initial one
    first = _state(straight / "model_0000001.pth")
    assert not torch.equal(first["model"]["queue.queue"], a["model"]["queue.queue"])


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
