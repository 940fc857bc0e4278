#!/usr/bin/env python
"""Plot a detectron2 run's metrics.json: loss terms, teacher temperature, momentum, learning rate,
accuracies and PLRC/data counters over iterations, as one PNG.

    python tools/plot_metrics.py output/demo/pretrain                 # -> output/demo/pretrain/metrics.png
    python tools/plot_metrics.py output/demo/pretrain/metrics.json --output curves.png

Reading is forgiving, because real metrics.json files are: detectron2's JSONWriter appends one JSON
object per line, but a killed run leaves a truncated last line, a resumed run appends iterations it
had already written (the later value wins), scalars of one iteration can be split over several lines,
and NaN / Infinity appear as bare words. Objects split over lines or glued together on one line are
read too. Unreadable text is skipped and counted; keys a run did not log leave their panel empty
with a note. Exits non-zero only when there is no metrics.json or not a single record in it.
"""
import argparse
import json
import os
import sys
from collections import defaultdict
from typing import Dict, List, Tuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Panel title -> predicate on a metric name. A key lands in the first panel whose predicate holds.
PANELS = (
    ("losses", lambda k: k.startswith("loss") or k == "total_loss"),
    ("teacher temperature", lambda k: "temperature" in k.lower()),
    ("momentum", lambda k: "momentum" in k.lower()),
    ("learning rate", lambda k: k == "lr" or k.split("/")[-1] == "lr"),
    ("accuracies", lambda k: k.split("/")[-1].endswith("_acc")),
    ("PLRC and data counters", lambda k: k.startswith("plrc_") or k.startswith("data/")),
)


def parse_metrics_text(text: str) -> Tuple[Dict[int, dict], int]:
    """JSON objects in `text` -> ({iteration: merged scalars}, number of skipped fragments).

    Objects are decoded one after another wherever they start; a fragment that does not decode is
    skipped up to the next line. Records of the same iteration are merged, later values winning.
    """
    decoder = json.JSONDecoder()
    records: Dict[int, dict] = defaultdict(dict)
    skipped, pos = 0, 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            skipped += 1
            newline = text.find("\n", pos)
            pos = len(text) if newline < 0 else newline + 1
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("iteration"), (int, float)):
            skipped += 1
            continue
        records[int(obj["iteration"])].update(obj)
    return dict(records), skipped


def series_by_key(records: Dict[int, dict]) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """{name: (iterations int (n,), values float (n,))} for every numeric scalar, sorted by iteration."""
    points: Dict[str, List[Tuple[int, float]]] = defaultdict(list)
    for it in sorted(records):
        for key, value in records[it].items():
            if key != "iteration" and isinstance(value, (int, float)) and not isinstance(value, bool):
                points[key].append((it, float(value)))
    return {k: (np.array([p[0] for p in v]), np.array([p[1] for p in v])) for k, v in points.items()}


def group_series(series: Dict[str, tuple]) -> Dict[str, Dict[str, tuple]]:
    """Splits `series_by_key` output into the PANELS (keys that fit no panel are dropped)."""
    groups = {title: {} for title, _ in PANELS}
    for key in sorted(series):
        for title, belongs in PANELS:
            if belongs(key):
                groups[title][key] = series[key]
                break
    return groups


def draw_metrics(groups: Dict[str, Dict[str, tuple]], title: str, dpi: int = 100) -> Figure:
    """A 3 x 2 figure, one axes per panel; NaN / inf values show as gaps."""
    fig = Figure(figsize=(11, 10.5), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 2)
    for ax, (panel, members) in zip(axes.flat, groups.items()):
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if not members:
            ax.text(0.5, 0.5, f"no {panel} keys in metrics.json", ha="center", va="center",
                    transform=ax.transAxes, fontsize=9, color="gray")
            continue
        for key, (its, values) in members.items():
            shown = np.where(np.isfinite(values), values, np.nan)
            ax.plot(its, shown, marker="." if len(its) < 30 else None, linewidth=1.2, label=key)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a detectron2 OUTPUT_DIR, or the metrics.json file itself")
    parser.add_argument("--output", help="PNG to write (default: metrics.png next to metrics.json)")
    args = parser.parse_args(argv)
    path = os.path.join(args.run, "metrics.json") if os.path.isdir(args.run) else args.run
    if not os.path.isfile(path):
        print(f"error: no metrics.json at {path!r} (give a detectron2 OUTPUT_DIR or the file)", file=sys.stderr)
        return 2
    with open(path, encoding="utf-8", errors="replace") as f:
        records, skipped = parse_metrics_text(f.read())
    if not records:
        print(f"error: {path} holds no JSON record with an 'iteration' ({skipped} fragments skipped)",
              file=sys.stderr)
        return 2
    groups = group_series(series_by_key(records))
    output = args.output or os.path.join(os.path.dirname(os.path.abspath(path)), "metrics.png")
    last = max(records)
    fig = draw_metrics(groups, f"{path}: iterations {min(records)}-{last}")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output)
    missing = [p for p, members in groups.items() if not members]
    print(f"wrote {output}: {len(records)} iterations, {skipped} unreadable fragments skipped"
          + (f"; no keys for: {', '.join(missing)}" if missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
