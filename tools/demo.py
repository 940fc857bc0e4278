#!/usr/bin/env python
"""`make demo`: the whole PLRC pipeline on the embedded demo data, on whatever this machine has.

    1. pre-train      tools/train_net.py --config-file configs/plrc_pretrain.yaml      -> output/demo/pretrain/
    2. convert        tools/convert_plrc_to_d2.py (checked against the fine-tune config)  -> output/demo/*.pkl
    3. check          the converted weights initialise every ResNet tensor of the Mask R-CNN
    4. fine-tune      Mask R-CNN R-18-FPN from the converted weights, then COCO evaluation -> output/demo/finetune_plrc/
    5. baseline       the same fine-tune from random init                               -> output/demo/finetune_random_init/
    6. table          box AP / AP50 / AP75 and mask AP of both, wall times              -> output/demo/results.md

Every stage is skipped when its output exists, and an interrupted training resumes from its last
checkpoint, so re-running `make demo` continues where it stopped (`make clean-demo` starts afresh).
Logs of each stage: output/demo/logs/<stage>.log. Extra config overrides: --pretrain-opts / --finetune-opts.
"""
import argparse
import json
import os
import subprocess
import sys
import time
import warnings

warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notes from importing detectron2
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
DEMO_CONFIGS = os.path.join("projects", "Demo", "configs")
METRICS = (("bbox/AP", "box AP"), ("bbox/AP50", "box AP50"), ("bbox/AP75", "box AP75"), ("segm/AP", "mask AP"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=os.path.join("output", "demo"), help="root of every artefact")
    p.add_argument("--pretrain-config", default=os.path.join("configs", "plrc_pretrain.yaml"))
    p.add_argument("--finetune-config", default=os.path.join(DEMO_CONFIGS, "mask_rcnn_R_18_FPN_demo_plrc.yaml"))
    p.add_argument("--baseline-config", default=os.path.join(DEMO_CONFIGS, "mask_rcnn_R_18_FPN_demo_random_init.yaml"))
    p.add_argument("--pretrain-opts", nargs="*", default=[], help="KEY VALUE overrides of the pre-training")
    p.add_argument("--finetune-opts", nargs="*", default=[], help="KEY VALUE overrides of both fine-tunes")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when available)")
    return p.parse_args(argv)


class Stages:
    """Runs stages once; records wall time and outcome in <output>/stages.json (what makes re-runs skip)."""

    def __init__(self, output):
        self.output, self.path = output, os.path.join(output, "stages.json")
        os.makedirs(os.path.join(output, "logs"), exist_ok=True)
        self.record = json.load(open(self.path)) if os.path.exists(self.path) else {}

    def log(self, name):
        return os.path.join(self.output, "logs", f"{name}.log")

    def run(self, name, done, command=None, func=None):
        """Skips `name` when done() already holds; else runs `command` (a subprocess) or `func`."""
        if done() and name in self.record:
            print(f"[{name}] done in an earlier run ({self.record[name]['wall_s']:.0f} s), skipped", flush=True)
            self.record[name]["skipped"] = True
            return
        print(f"[{name}] running" + (f": {' '.join(command)}" if command else ""), flush=True)
        start = time.time()
        if command:
            with open(self.log(name), "a") as log:
                code = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
            if code:
                tail = open(self.log(name)).read().splitlines()[-15:]
                raise SystemExit(f"[{name}] failed (exit {code}); last lines of {self.log(name)}:\n" + "\n".join(tail))
        if func:
            func()
        if not done():
            raise SystemExit(f"[{name}] finished but its output is missing; see {self.log(name)}")
        self.record[name] = {"wall_s": time.time() - start, "skipped": False}
        with open(self.path, "w") as f:
            json.dump(self.record, f, indent=1)
        print(f"[{name}] done in {self.record[name]['wall_s']:.0f} s", flush=True)


def train_command(config, output_dir, device, opts):
    return [sys.executable, os.path.join("tools", "train_net.py"), "--config-file", config, "--resume",
            "MODEL.DEVICE", device, "OUTPUT_DIR", output_dir, *opts]


def final_metrics(output_dir):
    """{metric: value} of the last evaluation in <output_dir>/metrics.json, or {} if there is none."""
    from plrc_d2.engine.results import final_eval_metrics

    return final_eval_metrics(os.path.join(REPO, output_dir), [k for k, _ in METRICS])


def check_weights(config, weights, device, opts, marker=None):
    """Builds the fine-tune model and fails unless `weights` fills every ResNet tensor in it; on success
    writes `marker` (the stage's proof of completion), if given."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import plrc_d2  # noqa: F401
    from plrc_d2.checkpoint import assert_backbone_loaded
    from plrc_d2.config import add_plrc_config

    cfg = add_plrc_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, config))
    cfg.merge_from_list(list(opts) + ["MODEL.DEVICE", "cpu"])
    loaded = assert_backbone_loaded(build_model(cfg), os.path.join(REPO, weights))
    print(f"[check] {weights} initialises all {len(loaded)} ResNet tensors of the fine-tune model", flush=True)
    if marker:
        with open(marker, "w") as f:
            f.write(f"{weights}: all {len(loaded)} ResNet tensors of {config} initialised\n")


def table(stages, runs):
    """Markdown table of both fine-tunes (COCO AP in %, as detectron2 reports it)."""
    head = "| init | " + " | ".join(label for _, label in METRICS) + " | fine-tune + eval wall time |"
    lines = [head, "|---" * (len(METRICS) + 2) + "|"]
    for label, stage, output_dir in runs:
        m = final_metrics(output_dir)
        wall = stages.record.get(stage, {})
        note = " (earlier run)" if wall.get("skipped") else ""
        cells = [f"{m[k]:.1f}" for k, _ in METRICS]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {wall.get('wall_s', float('nan')) / 60:.1f} min{note} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    out = args.output
    stages = Stages(os.path.join(REPO, out))
    pre_dir = os.path.join(out, "pretrain")
    final = os.path.join(pre_dir, "model_final.pth")
    weights = os.path.join(out, "plrc_R_18_demo.pkl")
    ft_dir, rand_dir = os.path.join(out, "finetune_plrc"), os.path.join(out, "finetune_random_init")
    exists = lambda path: (lambda: os.path.exists(os.path.join(REPO, path)))  # noqa: E731
    start = time.time()

    stages.run("pretrain", exists(final), train_command(args.pretrain_config, pre_dir, device, args.pretrain_opts))
    stages.run("convert", exists(weights), [sys.executable, os.path.join("tools", "convert_plrc_to_d2.py"), final,
                                            weights, "--config-file", args.finetune_config])
    checked = weights + ".checked"
    stages.run("check", exists(checked), func=lambda: check_weights(
        args.finetune_config, weights, device, args.finetune_opts, os.path.join(REPO, checked)))
    stages.run("finetune_plrc", lambda: bool(final_metrics(ft_dir)),
               train_command(args.finetune_config, ft_dir, device, ["MODEL.WEIGHTS", weights, *args.finetune_opts]))
    stages.run("finetune_random_init", lambda: bool(final_metrics(rand_dir)),
               train_command(args.baseline_config, rand_dir, device, ["MODEL.WEIGHTS", "", *args.finetune_opts]))

    runs = [("PLRC pre-trained", "finetune_plrc", ft_dir), ("random init", "finetune_random_init", rand_dir)]
    result = table(stages, runs)
    total = sum(v["wall_s"] for v in stages.record.values())
    report = "\n".join([
        f"# make demo ({device}, {os.cpu_count()} CPU cores)", "",
        "Mask R-CNN R-18-FPN on plrc_demo_val (COCO AP, %), same schedule and seed for both rows:", "", result, "",
        "Wall time per stage (s): " + ", ".join(f"{k} {v['wall_s']:.0f}" for k, v in stages.record.items())
        + f"; all stages {total / 60:.1f} min, this invocation {(time.time() - start) / 60:.1f} min.", "",
        "Artefacts:",
        f"- pre-training: {pre_dir}/ (model_final.pth, metrics.json, log.txt, TensorBoard events)",
        f"- converted backbone: {weights}",
        f"- fine-tunes: {ft_dir}/, {rand_dir}/ (model_final.pth, metrics.json, inference/)",
        f"- stage logs: {out}/logs/; this report: {out}/results.md",
    ])
    with open(os.path.join(REPO, out, "results.md"), "w") as f:
        f.write(report + "\n")
    print("\n" + report)


if __name__ == "__main__":
    main()
