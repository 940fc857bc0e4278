#!/usr/bin/env python
"""Transfer study: does point-level region contrast beat image-level contrast and random init?

For each arm: pre-train once (same budget and --pretrain-seed for every arm) -> convert; then for each seed:
fine-tune the same Mask R-CNN with the same schedule -> COCO evaluation (the MoCo / PLRC transfer protocol:
one pre-trained model, several fine-tuning trials). Writes results.json, results.md and results.png into
--output; per-run folders (checkpoints, logs) sit beside them. Every stage is skipped when its output
exists, so an interrupted study continues where it stopped.

    python projects/TransferStudy/run_study.py                     # the committed small-scale study
    python projects/TransferStudy/run_study.py --arms plrc moco_v2 random_init --seeds 0 --output out/coco \
        --pretrain-config configs/pretrain/plrc_R_50_100ep_in1k.yaml \
        --finetune-config projects/MaskRCNN-COCO/configs/mask_rcnn_R_50_FPN_1x_plrc.yaml --num-gpus 8

(The study reads box and mask AP, so the fine-tune must be a Mask R-CNN; for VOC use
projects/FasterRCNN-VOC/run_seeds.py per arm, see README.md.)

Arms differ only in the keys listed in ARMS; `check_arms` verifies that on the resolved configs and the
script refuses to run otherwise.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))

# arm -> pre-training overrides (None = no pre-training: fine-tune from random init)
ARMS = {
    "plrc": [],
    "moco_v2": ["MODEL.PLRC.POINT_LOSS_WEIGHT", "0.0", "MODEL.PLRC.DISTILL_LOSS_WEIGHT", "0.0"],
    "plrc_no_distill": ["MODEL.PLRC.DISTILL_LOSS_WEIGHT", "0.0"],
    "plrc_all_regions": ["INPUT.PLRC.NUM_SHARED_REGIONS", "16"],  # all cells of the 4x4 grid
    "plrc_felzenszwalb": ["INPUT.PLRC.REGION_SOURCE", "felzenszwalb"],
    "random_init": None,
}
# keys that legitimately differ between runs of one arm/seed and another
RUN_KEYS = {"OUTPUT_DIR", "SEED", "MODEL.WEIGHTS"}
METRICS = ("bbox/AP", "bbox/AP50", "bbox/AP75", "segm/AP")
PRETRAIN_CURVES = ("loss_plrc_image", "loss_plrc_point", "loss_plrc_distill", "plrc_image_acc", "plrc_point_acc")


def load_cfg(config_file, opts):
    from detectron2.config import get_cfg

    import plrc_d2  # noqa: F401
    from plrc_d2.config import add_plrc_config

    cfg = get_cfg()
    add_plrc_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg


def flatten(cfg, prefix=""):
    out = {}
    for k, v in cfg.items():
        key = prefix + k
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def diff_keys(a, b):
    fa, fb = flatten(a), flatten(b)
    return {k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}


def check_arms(pretrain_config, arms, extra_opts=()):
    """Raises if an arm's resolved pre-training config differs from the PLRC arm's in anything but its
    own overrides. Returns {arm: sorted differing keys}."""
    base = load_cfg(pretrain_config, extra_opts)
    found = {}
    for arm in arms:
        overrides = ARMS[arm]
        if overrides is None:
            continue
        cfg = load_cfg(pretrain_config, list(extra_opts) + overrides)
        keys = diff_keys(base, cfg)
        intended = set(overrides[0::2])
        if not keys <= intended:
            raise AssertionError(f"arm {arm} differs from 'plrc' in {sorted(keys - intended)} beyond {sorted(intended)}")
        found[arm] = sorted(keys)
    return found


def check_run_configs(output, arms, seeds):
    """After the runs: the config.yaml that detectron2 wrote for every pre-training (one per arm) and every
    fine-tune must equal the first arm's (same seed) up to the arm's own keys and RUN_KEYS. Returns the
    number of checked pairs."""
    from detectron2.config import CfgNode

    def read(arm, seed, stage):
        folder = os.path.join(output, arm, "pretrain") if stage == "pretrain" else \
            os.path.join(output, arm, f"seed{seed}", stage)
        path = os.path.join(folder, "config.yaml")
        return CfgNode.load_yaml_with_base(path) if os.path.exists(path) else None

    checked = 0
    for seed in seeds:
        for stage in ("pretrain", "finetune") if seed == seeds[0] else ("finetune",):
            ref = read(arms[0], seed, stage)
            for arm in arms[1:]:
                other = read(arm, seed, stage)
                if ref is None or other is None:
                    continue
                allowed = RUN_KEYS | (set((ARMS[arm] or [])[0::2]) | set((ARMS[arms[0]] or [])[0::2])
                                      if stage == "pretrain" else set())
                extra = diff_keys(ref, other) - allowed
                if extra:
                    raise AssertionError(f"{stage} of {arm} seed {seed} differs from {arms[0]} in {sorted(extra)}")
                checked += 1
    return checked


def run(cmd, log_path):
    print("+", " ".join(cmd), flush=True)
    start = time.time()
    with open(log_path, "a") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"command failed ({proc.returncode}), see {log_path}: {' '.join(cmd)}")
    return time.time() - start


def last_metrics(output_dir):
    """The evaluation results of a finished fine-tune, from detectron2's metrics.json."""
    from plrc_d2.engine.results import final_eval_metrics

    found = final_eval_metrics(output_dir, METRICS)
    if not found:
        raise SystemExit(f"{output_dir}/metrics.json lacks some of {METRICS}: did the fine-tune evaluate?")
    return found


def pretrain_arm(args, arm):
    """Pre-trains the arm once (seed --pretrain-seed) and converts it. Returns (weights path, "" for
    random init; pre-training seconds)."""
    if ARMS[arm] is None:
        return "", 0.0
    out = os.path.join(args.output, arm)
    pre_dir, weights = os.path.join(out, "pretrain"), os.path.join(out, "backbone.pkl")
    os.makedirs(out, exist_ok=True)
    final, log, timing = os.path.join(pre_dir, "model_final.pth"), os.path.join(out, "log.txt"), \
        os.path.join(out, "pretrain_time.json")
    if not os.path.exists(final):
        seconds = run([sys.executable, "tools/train_net.py", "--config-file", args.pretrain_config,
                       "--num-gpus", str(args.num_gpus), "--resume", *args.pretrain_opts, *ARMS[arm],
                       "SEED", str(args.pretrain_seed), "OUTPUT_DIR", pre_dir], log)
        with open(timing, "w") as f:
            json.dump({"pretrain_s": seconds}, f)
    if not os.path.exists(weights):
        run([sys.executable, "tools/convert_plrc_to_d2.py", final, weights], log)
    if not os.path.exists(timing):  # pre-trained outside this script: time unknown
        return weights, float("nan")
    with open(timing) as f:
        return weights, json.load(f)["pretrain_s"]


def run_arm_seed(args, arm, seed, weights):
    """Fine-tunes from `weights` ("" = random init) with `seed`, evaluates. Returns the result record."""
    out = os.path.join(args.output, arm, f"seed{seed}")
    os.makedirs(out, exist_ok=True)
    result_path = os.path.join(out, "result.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            return json.load(f)
    ft_dir = os.path.join(out, "finetune")
    seconds = run([sys.executable, "tools/train_net.py", "--config-file", args.finetune_config,
                   "--num-gpus", str(args.num_gpus), "--resume", *args.finetune_opts, "MODEL.WEIGHTS", weights,
                   "SEED", str(seed), "OUTPUT_DIR", ft_dir], os.path.join(out, "log.txt"))
    record = {"arm": arm, "seed": seed, **last_metrics(ft_dir), "finetune_s": seconds}
    with open(result_path, "w") as f:
        json.dump(record, f, indent=1)
    return record


def summarise(records, arms):
    import numpy as np

    table = {}
    for arm in arms:
        rows = [r for r in records if r["arm"] == arm]
        table[arm] = {k: (float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows], ddof=1))
                          if len(rows) > 1 else 0.0) for k in METRICS}
        table[arm]["seeds"] = [r["seed"] for r in rows]
    return table


def write_reports(args, records, table, meta):
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump({"meta": meta, "runs": records, "summary": table}, f, indent=1)
    lines = [f"# Transfer study ({meta['date']})", "",
             f"Command: `{meta['command']}`  ", f"Commit: {meta['commit']}  ", f"Machine: {meta['machine']}  ",
             f"Wall time (the stages run one after another; summed over every run, resumed ones included): "
             f"{meta['wall_time_min']:.1f} min  ",
             f"Pre-training: `{os.path.relpath(args.pretrain_config, REPO)}` {' '.join(args.pretrain_opts)}  ",
             f"Fine-tuning: `{os.path.relpath(args.finetune_config, REPO)}` {' '.join(args.finetune_opts)}", "",
             f"One pre-training per arm (seed {meta['pretrain_seed']}); mean ± sample std over the fine-tuning "
             "seeds (COCO AP, %).", "",
             "| arm | seeds | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for arm, row in table.items():
        cells = [f"{row[k][0]:.2f} ± {row[k][1]:.2f}" for k in METRICS]
        lines.append(f"| {arm} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    curves = {arm: c for arm, c in meta.get("pretrain_curves", {}).items() if c}
    if curves:
        lines += ["", "Pre-training, first -> last logged value (median of detectron2's 20-iteration window; weighted "
                  "losses, so a weight-0 term reads 0):", "",
                  "| arm | " + " | ".join(PRETRAIN_CURVES) + " |", "|---|" + "---|" * len(PRETRAIN_CURVES)]
        for arm, c in curves.items():
            cells = [f"{c[k][0]:.3f} -> {c[k][1]:.3f}" if k in c else "-" for k in PRETRAIN_CURVES]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    with open(os.path.join(args.output, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(table, os.path.join(args.output, "results.png"))


def plot(table, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(table)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.5))
    for ax, metric in zip(axes, METRICS):
        means = [table[a][metric][0] for a in arms]
        stds = [table[a][metric][1] for a in arms]
        ax.bar(range(len(arms)), means, yerr=stds, capsize=3, color="tab:blue")
        ax.set_xticks(range(len(arms)), arms, rotation=45, ha="right", fontsize=8)
        ax.set_title(metric)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="fine-tuning seeds")
    p.add_argument("--pretrain-seed", type=int, default=0, help="seed of every arm's one pre-training")
    p.add_argument("--pretrain-config", default=os.path.join(HERE, "configs", "pretrain.yaml"))
    p.add_argument("--finetune-config", default=os.path.join(HERE, "configs", "finetune.yaml"))
    p.add_argument("--pretrain-opts", nargs="*", default=[], help="overrides for every arm's pre-training")
    p.add_argument("--finetune-opts", nargs="*", default=[], help="overrides for every fine-tune")
    p.add_argument("--num-gpus", type=int, default=1)
    p.add_argument("--output", default=os.path.join(HERE, "results"), help="results.{md,json,png} and per-run folders")
    p.add_argument("--check-only", action="store_true", help="verify the arms' configs and exit")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    for flag, path in (("--pretrain-config", args.pretrain_config), ("--finetune-config", args.finetune_config)):
        if not os.path.isfile(path):
            raise SystemExit(f"{flag} {path}: no such config file")
    differing = check_arms(args.pretrain_config, args.arms, args.pretrain_opts)
    print("arms differ from 'plrc' only in:", json.dumps(differing))
    if args.check_only:
        return
    os.makedirs(args.output, exist_ok=True)
    records, pretrain_s = [], {}
    for arm in args.arms:
        weights, pretrain_s[arm] = pretrain_arm(args, arm)
        records += [run_arm_seed(args, arm, seed, weights) for seed in args.seeds]
    print(f"resolved configs of {check_run_configs(args.output, args.arms, args.seeds)} run pairs checked")
    from plrc_d2.engine.results import first_and_last

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    meta = {"date": datetime.date.today().isoformat(), "commit": commit.stdout.strip() or "unknown",
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
            "wall_time_min": (sum(pretrain_s.values()) + sum(r["finetune_s"] for r in records)) / 60,
            "pretrain_s": pretrain_s, "pretrain_seed": args.pretrain_seed,
            "command": " ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
            "arm_differences": differing,
            "pretrain_curves": {arm: first_and_last(os.path.join(args.output, arm, "pretrain"), PRETRAIN_CURVES)
                                for arm in args.arms if ARMS[arm] is not None}}
    table = summarise(records, args.arms)
    write_reports(args, records, table, meta)
    print(open(os.path.join(args.output, "results.md")).read())


if __name__ == "__main__":
    main()
