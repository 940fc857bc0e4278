"""`tools/benchmark.py distill`: the distillation loss + gradient alone, per implementation, same inputs.

  python tools/benchmark.py distill [--batch 16] [--size 224] [--iters 5] [--device cpu] [--threads N]

Inputs have a training step's shapes and geometry: V_q / V_d crop boxes as the train benchmark draws them
(RandomResizedCrop, overlap >= 0.5), random unit distillation maps at the backbone's h x w (S / 32) and unit-row
logits weights, matched and tiled as in the model (`meta_arch.matched_cell_tables`, reference settings of
MODEL.PLRC.*: M = 56, d_u = 256, 4096 logits, t_s = 0.1, t_t = 0.04 as at the start of the ramp). Each round times
every implementation once (the order rotating), so a drifting machine affects them alike; reported: the median
seconds of loss + gradient w.r.t. the student table, and the loss values (which agree to float32 rounding). CPU:
the compiled kernel and the PyTorch ops (MODEL.PLRC.DISTILL_CPU_KERNEL compiled / torch); a GPU, or a CPU without a
C compiler, has the PyTorch ops only.
"""
import argparse
import json
import statistics
import time

import torch
from torch.nn import functional as F

from plrc_d2.modeling.losses import matched_distillation_loss
from plrc_d2.modeling.meta_arch import PLRCParams, matched_cell_tables
from plrc_d2.modeling.native import distill_kernel_status, load_distill_kernel

from . import at_least
from .train import synthetic_inputs

__all__ = ["main"]


def _parser():
    p = argparse.ArgumentParser(prog="tools/benchmark.py distill", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=at_least(1), default=16, help="images per step (one process)")
    p.add_argument("--size", type=at_least(32), default=224, help="crop size S")
    p.add_argument("--map-size", type=at_least(1), default=56, help="M")
    p.add_argument("--dim", type=at_least(1), default=256, help="DISTILL_DIM (of u)")
    p.add_argument("--logits", type=at_least(1), default=4096, help="DISTILL_NUM_LOGITS")
    p.add_argument("--iters", type=at_least(1), default=5, help="timed rounds")
    p.add_argument("--warmup", type=at_least(0), default=1, help="untimed rounds")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=at_least(0), default=0, help="torch.set_num_threads (0: leave as is)")
    p.add_argument("--json", default="", help="also write the result to this file")
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    params = PLRCParams(map_size=args.map_size)
    data = synthetic_inputs(args.batch, args.size, 1, 1, seed=0)
    box_q, box_d = (torch.stack([d["views"][v]["crop_box"] for d in data]) for v in (0, 2))
    image_size = torch.tensor([[d["height"], d["width"]] for d in data], dtype=torch.float64)  # as parse_batch
    gen = torch.Generator().manual_seed(0)
    hw = max(args.size // 32, 1)
    unit = lambda *shape: F.normalize(torch.randn(*shape, generator=gen), dim=1).to(device)  # noqa: E731
    u_q, u_d, u_k = (unit(args.batch, args.dim, hw, hw) for _ in range(3))
    w_q, w_k = unit(args.logits, args.dim), unit(args.logits, args.dim)
    center = (torch.randn(1, args.map_size ** 2 + args.logits, generator=gen) * 0.01).to(device)
    student, teacher, num_pairs = matched_cell_tables(u_q, u_d, u_k, w_q, w_k, box_q, box_d, image_size, params)
    table = student.table.detach().requires_grad_()
    student.table = table
    # without a C compiler only the PyTorch ops run (the kernel's status is printed)
    kernels = ["compiled", "torch"] if device.type == "cpu" and load_distill_kernel() is not None else ["torch"]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(kernel):
        start = time.perf_counter()
        loss = matched_distillation_loss(student, teacher, center, params.student_temperature,
                                         params.teacher_temperature_start, params.chunk_pairs(device.type),
                                         kernel=kernel)
        torch.autograd.grad(loss, table)
        sync()
        return time.perf_counter() - start, float(loss.detach())

    times = {k: [] for k in kernels}
    losses = {}
    for r in range(args.warmup + args.iters):
        for k in kernels[r % len(kernels):] + kernels[:r % len(kernels)]:
            dt, losses[k] = run(k)
            if r >= args.warmup:
                times[k].append(dt)
    res = {"batch": args.batch, "size": args.size, "device": args.device, "threads": torch.get_num_threads(),
           "pairs": num_pairs, "student_rows": int(student.rows.shape[0]),
           "teacher_distinct_rows": int(teacher.cells.unique().numel()), "width": int(table.shape[1]),
           "compiled_kernel": distill_kernel_status(),
           "kernels": {k: {"s_median": statistics.median(t), "times": t, "loss": losses[k]} for k, t in times.items()}}
    if "compiled" in times:
        res["speedup_compiled_vs_torch"] = res["kernels"]["torch"]["s_median"] / res["kernels"]["compiled"]["s_median"]
    print(f"PLRC distillation benchmark: batch {args.batch} S={args.size} M={args.map_size} device {args.device} "
          f"threads={res['threads']}: {num_pairs} matched pairs, {res['student_rows']} student rows, "
          f"{res['teacher_distinct_rows']} distinct teacher rows, {res['width']} logits each; "
          f"compiled CPU kernel: {res['compiled_kernel']}")
    for k, r in res["kernels"].items():
        print(f"  {k:8s}: {r['s_median']:.3f} s (median; {min(r['times']):.3f}-{max(r['times']):.3f} over "
              f"{len(r['times'])})  loss {r['loss']:.6f}")
    if "speedup_compiled_vs_torch" in res:
        print(f"  compiled kernel vs PyTorch ops: {res['speedup_compiled_vs_torch']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
