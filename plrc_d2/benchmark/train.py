"""`tools/benchmark.py train`: speed and peak memory of a full PLRC training step vs. its compute floor.

  python tools/benchmark.py train --config-file configs/Base-PLRC.yaml --batch 16 --size 224 [--amp]
         [--device cpu|cuda] [--iters 3] [--warmup 1] [KEY VALUE ...]

full step  = PLRC forward (V_q online fwd, EMA update, V_k/V_d momentum fwds, three losses, queue and
             centre updates) + backward, on synthetic inputs that follow the mapper -> model contract.
floor      = the backbone alone: one forward+backward on one view + two no-grad forwards (the least any
             two-encoder method with three views must compute).
heads      = the floor plus PLRC's heads (g and h on V_q with gradients, g+h on V_k and h on V_d without):
             the encoder compute the method itself prescribes; full - heads is what the losses, matching,
             EMA update and queue add.
Timing: one child process builds the model once and runs the three phases in interleaved rounds (--iters
rounds, the order rotating), so a drifting shared machine affects all three alike; s/iter is each phase's
median. The per-round ratios (full / floor of the same round, run back to back) show how far the drift reaches.
Peak memory: each phase alone in its own child process (same config, inputs, threads), so the peaks are
comparable: CUDA max_memory_allocated, or on CPU the peak resident set size, above the state after set-up
(warm-up included). The optimizer step is excluded from all three.
"""
import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import List

import torch

from . import at_least

__all__ = ["main", "synthetic_inputs", "random_crop_box"]


def random_crop_box(gen: torch.Generator, aspect: float, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """A RandomResizedCrop box (4,) in [0,1]^2 of an image of width/height `aspect`; x swapped if flipped."""
    for _ in range(100):
        area = float(torch.empty(1).uniform_(*scale, generator=gen))
        log_r = torch.empty(1).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
        r = float(torch.exp(log_r))
        w, h = math.sqrt(area * r / aspect), math.sqrt(area / r * aspect)  # fractions of the image sides
        if w <= 1 and h <= 1:
            break
    w, h = min(w, 1.0), min(h, 1.0)
    x0 = float(torch.rand(1, generator=gen)) * (1 - w)
    y0 = float(torch.rand(1, generator=gen)) * (1 - h)
    box = torch.tensor([x0, y0, x0 + w, y0 + h])
    return box[[2, 1, 0, 3]] if float(torch.rand(1, generator=gen)) < 0.5 else box


def _overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """|A n B| / max(|A|, |B|) of two (possibly flipped) boxes."""
    ax, bx = sorted(a[[0, 2]].tolist()), sorted(b[[0, 2]].tolist())
    iw = max(0.0, min(ax[1], bx[1]) - max(ax[0], bx[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    areas = [(ax[1] - ax[0]) * float(a[3] - a[1]), (bx[1] - bx[0]) * float(b[3] - b[1])]
    return iw * float(ih) / max(areas)


def _to_view(xy: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """(…, 2) image coordinates -> view coordinates of `box` (flip-aware)."""
    return (xy - box[:2]) / (box[2:] - box[:2])


def synthetic_inputs(num_images: int, size: int, num_regions: int, points_per_region: int, seed: int = 0,
                     min_overlap: float = 0.5, image_hw=(480, 640)) -> List[dict]:
    """Contract-following dataset dicts (../shared/DESIGN.md) with random uint8 views.

    V_q / V_d overlap >= min_overlap (rejection, bounded). Row r's points are drawn uniformly in the part
    of V_q n V_k that lies in the r-th horizontal band of the image (a stand-in for a region); a row is
    valid when that part is not empty. Deterministic in `seed`.
    """
    gen = torch.Generator().manual_seed(seed)
    aspect = image_hw[1] / image_hw[0]
    out = []
    for _ in range(num_images):
        q, k = random_crop_box(gen, aspect), random_crop_box(gen, aspect)
        d = random_crop_box(gen, aspect)
        for _ in range(50):
            if _overlap(q, d) >= min_overlap:
                break
            d = random_crop_box(gen, aspect)
        lo = torch.maximum(torch.minimum(q[[0, 1]], q[[2, 3]]), torch.minimum(k[[0, 1]], k[[2, 3]]))
        hi = torch.minimum(torch.maximum(q[[0, 1]], q[[2, 3]]), torch.maximum(k[[0, 1]], k[[2, 3]]))
        pts, valid = [], []
        for r in range(num_regions):
            blo = torch.stack([lo[0], torch.maximum(lo[1], torch.tensor(r / num_regions))])
            bhi = torch.stack([hi[0], torch.minimum(hi[1], torch.tensor((r + 1) / num_regions))])
            valid.append(bool((bhi > blo).all()))
            u = torch.rand(points_per_region, 2, generator=gen)
            pts.append(blo + u * (bhi - blo).clamp_min(0))
        pts = torch.stack(pts)  # (R, P, 2) image coordinates
        views = []
        for box in (q, k, d):
            img = torch.randint(0, 256, (3, size, size), generator=gen, dtype=torch.uint8)
            p = _to_view(pts, box).clamp(0.5 / size, 1 - 0.5 / size).float()
            views.append({"image": img, "points": p, "crop_box": box.float()})
        out.append({"views": views, "region_valid": torch.tensor(valid), "height": image_hw[0],
                    "width": image_hw[1]})
    return out


def _parser():
    p = argparse.ArgumentParser(prog="tools/benchmark.py train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default="configs/Base-PLRC.yaml")
    p.add_argument("--batch", type=at_least(1), default=16, help="images per step (one process)")
    p.add_argument("--size", type=at_least(32), default=224, help="crop size S (INPUT.PLRC.CROP_SIZE)")
    p.add_argument("--iters", type=at_least(1), default=3, help="timed rounds (one step of each phase per round)")
    p.add_argument("--warmup", type=at_least(0), default=1, help="untimed iterations per phase")
    p.add_argument("--amp", action="store_true", help="autocast (float16 on CUDA, bfloat16 on CPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default="", help="also write the result to this file")
    p.add_argument("--profile", default="", help="also profile 2 full steps (torch.profiler) after timing and "
                   "write the operator table, sorted by self time, to this text file")
    p.add_argument("--phase", default="", help=argparse.SUPPRESS)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p


def _setup(args):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import plrc_d2  # noqa: F401
    from plrc_d2.config import add_plrc_config

    cfg = get_cfg()
    add_plrc_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.INPUT.PLRC.CROP_SIZE = args.size
    cfg.MODEL.DEVICE = args.device
    q = cfg.MODEL.PLRC.QUEUE_SIZE
    cfg.MODEL.PLRC.QUEUE_SIZE = max(args.batch, q - q % args.batch)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    inputs = synthetic_inputs(args.batch, args.size, cfg.INPUT.PLRC.NUM_SHARED_REGIONS,
                              cfg.INPUT.PLRC.POINTS_PER_REGION, seed=0)
    return cfg, model, inputs


def _step_fn(phase: str, model, inputs, args):
    dtype = torch.float16 if args.device.startswith("cuda") else torch.bfloat16
    amp = torch.autocast(torch.device(args.device).type, dtype=dtype, enabled=args.amp)
    if phase == "full":
        def step():
            with amp:
                loss = sum(model(inputs).values())
            model.zero_grad(set_to_none=True)
            loss.backward()
        return step
    views = [model.normalize(torch.stack([d["views"][i]["image"] for d in inputs])) for i in range(3)]
    if phase == "heads":
        def heads_step():
            with amp:
                out = model.encoder(views[0])
                loss = out["dense"].float().mean() + out["u"].float().mean()
                with torch.no_grad():
                    model.momentum_encoder(views[1], dense=True, distill=True)
                    model.momentum_encoder(views[2], dense=False, distill=True)
            model.zero_grad(set_to_none=True)
            loss.backward()
        return heads_step
    online, key = model.encoder.backbone, model.momentum_encoder.backbone
    name = model.encoder.in_feature

    def floor_step():
        with amp:
            loss = online(views[0])[name].float().mean()
            with torch.no_grad():
                key(views[1])
                key(views[2])
        model.zero_grad(set_to_none=True)
        loss.backward()
    return floor_step


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


PHASES = ("floor", "heads", "full")


def _sync_fn(args):
    return torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)


def _run_memory(args) -> dict:
    """Peak memory of one phase, alone in this process: warm-up steps plus one step."""
    cfg, model, inputs = _setup(args)
    step = _step_fn(args.phase, model, inputs, args)
    cuda = args.device.startswith("cuda")
    # Peak memory above the state after set-up (model, optimizer-free, inputs); every step counts (on CPU freed
    # memory stays in the process, so a baseline taken after a step would hide the peak).
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    for _ in range(args.warmup + 1):
        step()
    _sync_fn(args)()
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_mem_bytes": peak - base,
            "peak_mem_kind": "cuda max_memory_allocated above model" if cuda else "peak RSS above set-up RSS"}


def _run_timing(args) -> dict:
    """Times of the three phases in one process, in interleaved rounds (the order rotates every round), so a
    drifting machine (other tenants, clocks) affects all three alike; s/iter is each phase's median."""
    cfg, model, inputs = _setup(args)
    steps = {phase: _step_fn(phase, model, inputs, args) for phase in PHASES}
    sync = _sync_fn(args)
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    sync()
    times = {phase: [] for phase in PHASES}
    for r in range(args.iters):
        for phase in PHASES[r % 3:] + PHASES[: r % 3]:
            start = time.perf_counter()
            steps[phase]()
            sync()
            times[phase].append(time.perf_counter() - start)
    if args.profile:
        _profile(steps["full"], sync, args.device.startswith("cuda"), args.profile)
    medians = {phase: statistics.median(t) for phase, t in times.items()}
    return {phase: {"s_per_iter": medians[phase], "iter_times": t, "images_per_s": args.batch / medians[phase]}
            for phase, t in times.items()}


def _profile(step, sync, cuda: bool, path: str) -> None:
    """Operator table of 2 steps (after the timed ones, so peak memory and timings are unaffected)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(2):
            step()
        sync()
    table, key = "", "self_cpu_time_total"
    for key in (["self_device_time_total", "self_cuda_time_total"] if cuda else []) + ["self_cpu_time_total"]:
        try:  # the device column's name differs between torch releases
            table = prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=60)
            break
        except (AttributeError, KeyError, ValueError):
            continue
    with open(path, "w") as f:
        f.write(f"2 full steps, sorted by {key}\n{table}\n")


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.phase:
        result = _run_timing(args) if args.phase == "timing" else _run_memory(args)
        print("PHASE_RESULT " + json.dumps(result), flush=True)
        return 0
    res = {"config": args.config_file, "batch": args.batch, "size": args.size, "amp": args.amp,
           "device": args.device, "threads": torch.get_num_threads(), "opts": args.opts}
    if args.device.startswith("cuda"):
        res["device_name"] = torch.cuda.get_device_name(0)
    for phase in PHASES + ("timing",):
        cmd = [sys.executable, "-m", "plrc_d2.benchmark.train", "--phase", phase] + _forward_args(argv)
        out = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("PHASE_RESULT ")]
        if out.returncode or not lines:
            sys.stderr.write(out.stdout[-4000:] + out.stderr[-4000:])
            raise SystemExit(f"benchmark phase {phase!r} failed (exit {out.returncode})")
        result = json.loads(lines[-1][len("PHASE_RESULT "):])
        if phase == "timing":
            for name in PHASES:
                res[name].update(result[name])
        else:
            res[phase] = result
    res["time_ratio"] = res["full"]["s_per_iter"] / res["floor"]["s_per_iter"]
    res["memory_ratio"] = res["full"]["peak_mem_bytes"] / max(res["floor"]["peak_mem_bytes"], 1)
    res["heads_time_ratio"] = res["heads"]["s_per_iter"] / res["floor"]["s_per_iter"]
    res["round_time_ratios"] = [a / b for a, b in zip(res["full"]["iter_times"], res["floor"]["iter_times"])]
    _print(res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


def _forward_args(argv) -> List[str]:
    return list(sys.argv[1:] if argv is None else argv)


def _print(res: dict) -> None:
    gib = 1024**3
    print(f"PLRC train benchmark: {res['config']} batch {res['batch']} S={res['size']} device {res['device']} "
          f"{res.get('device_name', '')} amp={res['amp']} threads={res['threads']}")
    for phase in ("floor", "heads", "full"):
        r = res[phase]
        t = r["iter_times"]
        print(f"  {phase:5s}: {r['s_per_iter']:.3f} s/iter (median; {min(t):.3f}-{max(t):.3f} over {len(t)})  "
              f"{r['images_per_s']:.2f} images/s  peak {r['peak_mem_bytes'] / gib:.2f} GiB ({r['peak_mem_kind']})")
    rounds = res["round_time_ratios"]
    print(f"  ratio full/floor: time {res['time_ratio']:.3f}  peak memory {res['memory_ratio']:.3f}"
          f"  (heads/floor: time {res['heads_time_ratio']:.3f})")
    print(f"  per-round time ratio: median {statistics.median(rounds):.3f}, {min(rounds):.3f}-{max(rounds):.3f} over "
          f"{len(rounds)} rounds")


if __name__ == "__main__":
    sys.exit(main())
