#!/usr/bin/env python
"""Fine-tune Faster R-CNN R50-C4 on VOC07+12 with N seeds and report mean ± std of AP / AP50 / AP75.

    python projects/FasterRCNN-VOC/run_seeds.py --weights plrc_r50.pkl --num-gpus 8
    python projects/FasterRCNN-VOC/run_seeds.py --weights plrc_r50.pkl --seeds 0 1 2 3 4 --output output/voc_plrc \
        --dry-run                                     # print the commands only

Each seed runs tools/train_net.py with the recipe (configs/faster_rcnn_R_50_C4_voc_plrc.yaml) into
<output>/seed<k>/ and is skipped when its metrics.json already holds the final evaluation; an interrupted
seed resumes from its last checkpoint. Before any training, the weights are checked to initialise every
ResNet tensor of the detector (plrc_d2.checkpoint.assert_backbone_loaded). Writes <output>/summary.json
and <output>/summary.md. The paper's number is the mean of 5 runs (SPEC: 58.2 / 82.7 / 65.1).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
METRICS = ("bbox/AP", "bbox/AP50", "bbox/AP75")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="converted backbone (tools/convert_plrc_to_d2.py output)")
    p.add_argument("--config-file", default=os.path.join(HERE, "configs", "faster_rcnn_R_50_C4_voc_plrc.yaml"))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--output", default=os.path.join("output", "voc_seeds"))
    p.add_argument("--num-gpus", type=int, default=8)
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="extra KEY VALUE config overrides for every seed")
    return p.parse_args(argv)


def seed_command(args, seed):
    return [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", args.config_file,
            "--num-gpus", str(args.num_gpus), "--resume", "MODEL.WEIGHTS", args.weights, "SEED", str(seed),
            "OUTPUT_DIR", os.path.join(args.output, f"seed{seed}"), *args.opts]


def final_metrics(output_dir):
    """{metric: value} of the last evaluation in metrics.json; {} when the run has not evaluated yet."""
    from plrc_d2.engine.results import final_eval_metrics

    return final_eval_metrics(output_dir, METRICS)


def summarize(per_seed):
    """{metric: (mean, sample std)} over seeds; std is 0.0 for a single seed."""
    out = {}
    for k in METRICS:
        values = [m[k] for m in per_seed.values()]
        out[k] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
    return out


def format_summary(per_seed, summary):
    lines = ["| seed | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    lines += [f"| {s} | " + " | ".join(f"{m[k]:.2f}" for k in METRICS) + " |" for s, m in sorted(per_seed.items())]
    lines.append(f"| mean ± std ({len(per_seed)}) | " + " | ".join(f"{summary[k][0]:.2f} ± {summary[k][1]:.2f}"
                                                               for k in METRICS) + " |")
    return "\n".join(lines)


def check_weights(args):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    sys.path.insert(0, REPO)
    import plrc_d2  # noqa: F401
    from plrc_d2.checkpoint import assert_backbone_loaded
    from plrc_d2.config import add_plrc_config

    cfg = add_plrc_config(get_cfg())
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(list(args.opts) + ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "BN"])
    assert_backbone_loaded(build_model(cfg), args.weights)


def main(argv=None):
    args = parse_args(argv)
    if args.dry_run:
        print("\n".join(" ".join(seed_command(args, s)) for s in args.seeds))
        return
    check_weights(args)
    per_seed = {}
    for seed in args.seeds:
        out = os.path.join(args.output, f"seed{seed}")
        if not final_metrics(out):
            print("+", " ".join(seed_command(args, seed)), flush=True)
            subprocess.run(seed_command(args, seed), cwd=REPO, check=True)
        per_seed[seed] = final_metrics(out)
        if not per_seed[seed]:
            raise SystemExit(f"{out}/metrics.json holds no final {METRICS}: the run did not evaluate")
    summary = summarize(per_seed)
    text = format_summary(per_seed, summary)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "summary.json"), "w") as f:
        json.dump({"per_seed": per_seed, "mean_std": summary, "config": args.config_file,
                   "weights": args.weights, "opts": args.opts}, f, indent=1)
    with open(os.path.join(args.output, "summary.md"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
