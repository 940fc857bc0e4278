"""Command line of tools/convert_plrc_to_d2.py (see its docstring). Exit status: 0 converted,
1 the checkpoint cannot be converted (message on stderr), 2 bad command line."""
import argparse
import os
import pickle
import sys
import warnings
from typing import List, Optional

import torch

from .architecture import ArchitectureError, arch_for_depth, arch_from_config, config_problems
from .convert import (
    ConversionError, check_target, extract_backbone, extract_state_dict, load_checkpoint_file,
    required_config_lines, to_d2_checkpoint, to_torchvision_state_dict,
)

__all__ = ["main", "build_parser"]


def build_parser(description: str = "") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="pre-training checkpoint (.pth / .pth.tar / .pkl)")
    p.add_argument("output", help="converted weights (.pkl for --format d2, .pth for torchvision)")
    p.add_argument("--format", choices=("d2", "torchvision"), default="d2")
    p.add_argument("--encoder", choices=("online", "momentum"), default="online",
                   help="online (query) encoder, the one that got gradients (default), or the momentum encoder")
    p.add_argument("--depth", type=int, help="fail unless the weights are this ResNet depth")
    p.add_argument("--config-file", help="fail unless the weights fit this detectron2 fine-tuning config "
                   "(architecture, INPUT.FORMAT, PIXEL_MEAN/STD, STRIDE_IN_1X1)")
    p.add_argument("-v", "--verbose", action="store_true", help="list every mapped tensor")
    return p


def _target_from_config(path: str):
    from detectron2.config import get_cfg

    import plrc_d2  # noqa: F401  (registers the transfer ROI heads the config may name)
    from plrc_d2.config import add_plrc_config

    cfg = add_plrc_config(get_cfg())
    try:
        cfg.merge_from_file(path)
    except Exception as e:  # noqa: BLE001  (a bad config file is a message, not a traceback)
        raise ConversionError(f"cannot read config {path}: {type(e).__name__}: {e}") from None
    problems = config_problems(cfg)
    if problems:
        raise ConversionError(f"{path} does not fit these weights:\n  " + "\n  ".join(problems))
    return arch_from_config(cfg)


def _write(obj, path: str, fmt: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    if fmt == "d2":
        with open(tmp, "wb") as f:
            pickle.dump(obj, f)
    else:
        torch.save(obj, tmp)
    os.replace(tmp, path)  # never leave a half-written file under the final name


def run(args) -> List[str]:
    """Converts; returns the report lines. Raises ConversionError."""
    conversion = extract_backbone(extract_state_dict(load_checkpoint_file(args.input)), args.encoder)
    try:
        if args.depth is not None:
            check_target(conversion, arch_for_depth(args.depth))
        if args.config_file:
            check_target(conversion, _target_from_config(args.config_file))
    except ArchitectureError as e:
        raise ConversionError(str(e)) from None
    if args.format == "d2":
        _write(to_d2_checkpoint(conversion, source=os.path.abspath(args.input)), args.output, "d2")
    else:
        _write(to_torchvision_state_dict(conversion), args.output, "torchvision")
    n = len(conversion.mapped)
    lines = [f"layout: {conversion.layout.name} ({conversion.layout.description})",
             f"encoder: {conversion.encoder}, backbone prefix {conversion.prefix!r}: {conversion.arch.describe()}",
             f"mapped {n} backbone tensors ({sum(v.numel() for v in conversion.tensors.values()):,} values), "
             f"0 unmapped, 0 duplicated, 0 wrong shape"]
    if args.verbose:
        lines += [f"  {src} -> {dst}" for src, dst in conversion.mapped]
    lines.append(f"dropped {sum(conversion.dropped.values())} tensors (not part of the backbone):")
    lines += [f"  {group}: {count}" for group, count in sorted(conversion.dropped.items())]
    lines.append(f"wrote {args.output} ({args.format} format)")
    if args.format == "d2":
        lines.append("fine-tuning config must set:")
        lines += [f"  {line}" for line in required_config_lines(conversion.arch)]
        lines.append("  (stock configs: BACKBONE.FREEZE_AT 0 and SyncBN/BN norms as in projects/*/configs)")
    return lines


def main(argv: Optional[List[str]] = None, description: str = "") -> int:
    args = build_parser(description).parse_args(argv)
    # Library chatter (pickle protocol notes, deprecations) would bury the report; errors still surface.
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        lines = run(args)
    except ConversionError as e:
        print(f"convert_plrc_to_d2: error: {e}", file=sys.stderr)
        print("convert_plrc_to_d2: nothing written.", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0
