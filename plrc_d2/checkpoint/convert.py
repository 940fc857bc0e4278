"""Pre-training checkpoint -> detectron2 (or torchvision) ResNet weights, failing loudly.

`extract_backbone` is the pure rename: state dict in, `Conversion` out (backbone tensors keyed by
`ResNetKey`, what was dropped and why). It raises `ConversionError` for anything that would otherwise
make detectron2 merely warn and train from random init: no recognisable layout, an unmapped or
duplicated tensor under the backbone prefix, a non-finite value, tensors that are no known ResNet.

The d2 output needs these fine-tuning settings (`required_config_lines`): INPUT.FORMAT RGB,
MODEL.PIXEL_MEAN/STD torchvision's, MODEL.RESNETS.STRIDE_IN_1X1 False, and the depth/widths printed.
"""
import pickle
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from .architecture import (
    TORCHVISION_PIXEL_MEAN, TORCHVISION_PIXEL_STD, ArchitectureError, ResNetArch, infer_arch, shape_problems,
)
from .layouts import LAYOUTS, FIRST_BLOCK_KEY, STEM_KEY, Layout, ResNetKey, format_key, parse_key

__all__ = [
    "ConversionError", "Conversion", "load_checkpoint_file", "extract_state_dict", "detect_layout",
    "extract_backbone", "to_d2_checkpoint", "to_torchvision_state_dict", "required_config_lines",
]
MAX_LISTED = 12


class ConversionError(Exception):
    """A checkpoint that cannot be converted without losing or inventing weights; the message says why."""


@dataclass
class Conversion:
    layout: Layout
    encoder: str  # "online" | "momentum"
    prefix: str
    arch: ResNetArch
    tensors: Dict[ResNetKey, torch.Tensor]  # every backbone tensor, incl. BN statistics
    mapped: List[Tuple[str, str]] = field(default_factory=list)  # (source name, d2 name)
    dropped: Dict[str, int] = field(default_factory=dict)  # group -> number of tensors


def _listing(items, limit=MAX_LISTED) -> str:
    items = list(items)
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    return "".join(f"\n  {x}" for x in items[:limit]) + more


def load_checkpoint_file(path: str):
    """Reads a torch (.pth/.pt) or pickle (.pkl) checkpoint; ConversionError with the reason otherwise."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise ConversionError(f"cannot read {path}: {e.strerror or e}") from None
    if not head:
        raise ConversionError(f"{path} is empty")
    errors = []
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (every failure becomes a message below, never a traceback)
        errors.append(f"torch.load: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}")
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as e:  # noqa: BLE001
        errors.append(f"pickle.load: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}")
    raise ConversionError(f"{path} is not a readable checkpoint (truncated, or not a .pth/.pkl file):"
                          + _listing(errors))


def _is_tensor_like(v) -> bool:
    return isinstance(v, (torch.Tensor, np.ndarray))


def extract_state_dict(obj) -> Dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint: obj["model"] (detectron2), obj["state_dict"] (MoCo/PLRC
    reference), or obj itself (torchvision). numpy arrays become tensors; other values are ignored."""
    if not isinstance(obj, Mapping):
        raise ConversionError(f"the file holds a {type(obj).__name__}, not a checkpoint dict")
    for container in ("model", "state_dict"):
        if isinstance(obj.get(container), Mapping):
            obj = obj[container]
            break
    tensors = {k: torch.as_tensor(v) for k, v in obj.items() if isinstance(k, str) and _is_tensor_like(v)}
    if not tensors:
        raise ConversionError("no tensors found; top-level keys:" + _listing(sorted(map(str, obj))))
    return tensors


def _present_prefixes(state_dict, prefixes, naming) -> List[str]:
    return [p for p in prefixes if p + STEM_KEY[naming] in state_dict and p + FIRST_BLOCK_KEY[naming] in state_dict]


def _stem_candidates(state_dict) -> List[str]:
    """Every prefix under which something ResNet-stem-like sits, for error messages."""
    found = set()
    for k in state_dict:
        for naming, stem in STEM_KEY.items():
            if k.endswith(stem) and (k == stem or k[: -len(stem)].endswith(".")):
                found.add(f"{k[: -len(stem)]!r} ({naming} names)")
    return sorted(found)


def detect_layout(state_dict: Mapping[str, torch.Tensor], encoder: str = "online") -> Tuple[Layout, str]:
    """(layout, prefix) of the requested encoder's backbone. Exactly one layout must match."""
    if encoder not in ("online", "momentum"):
        raise ConversionError(f"--encoder must be online or momentum, not {encoder!r}")
    matches = [(lay, p) for lay in LAYOUTS for p in _present_prefixes(state_dict, lay.online, lay.naming)]
    if not matches:
        groups = Counter(".".join(k.split(".")[:max(1, min(3, k.count(".")))]) + ".*" for k in state_dict)
        raise ConversionError(
            "no known checkpoint layout matches. Known layouts:"
            + _listing(f"{lay.name}: {lay.description}" for lay in LAYOUTS)
            + "\nResNet stems found under prefixes:" + (_listing(_stem_candidates(state_dict)) or " none")
            + "\nKey groups in the file (first 3 name components, tensor count):"
            + _listing((f"{g} ({n})" for g, n in sorted(groups.items())), 24))
    if len(matches) > 1:
        raise ConversionError("the checkpoint is ambiguous (duplicated backbones), it matches several layouts:"
                              + _listing(f"{lay.name} under {p!r}" for lay, p in matches))
    layout, prefix = matches[0]
    if encoder == "online":
        return layout, prefix
    momentum = _present_prefixes(state_dict, layout.momentum, layout.naming)
    if len(momentum) != 1:
        tried = ", ".join(repr(p) for p in layout.momentum) or "none (this layout has no momentum encoder)"
        raise ConversionError(f"--encoder momentum: layout {layout.name} found, but {len(momentum)} momentum "
                              f"backbones; prefixes tried: {tried}")
    return layout, momentum[0]


def _drop_group(name: str, layout: Layout, depth: int) -> str:
    """A label for a dropped tensor: the other encoder's backbone, or the first `depth` name parts."""
    for role, prefixes in (("online", layout.online), ("momentum", layout.momentum)):
        for p in prefixes:
            if p and name.startswith(p):
                return f"{p}* ({role} encoder backbone)"
    parts = name.split(".")
    return ".".join(parts[:depth]) + (".*" if len(parts) > depth else "")


def extract_backbone(state_dict: Mapping[str, torch.Tensor], encoder: str = "online") -> Conversion:
    """Renames the chosen encoder's backbone to ResNetKeys; everything else is counted as dropped."""
    layout, prefix = detect_layout(state_dict, encoder)
    tensors, mapped, unmapped, duplicated, dropped = {}, [], [], [], Counter()
    depth = max(1, prefix.count("."))  # dropped tensors are grouped by the prefix's depth
    for name, value in state_dict.items():
        if not name.startswith(prefix):
            dropped[_drop_group(name, layout, depth)] += 1
            continue
        rest = name[len(prefix):]
        key = parse_key(rest, layout.naming)
        if key is None:
            if layout.naming == "torchvision" and rest.startswith("fc."):
                dropped[prefix + "fc.* (classifier / projection head)"] += 1
            else:
                unmapped.append(name)
            continue
        if key in tensors:
            duplicated.append(f"{name} -> {format_key(key, 'd2')} (already mapped)")
            continue
        tensors[key] = value.detach().to("cpu")
        mapped.append((name, format_key(key, "d2")))
    if unmapped:
        raise ConversionError(f"{len(unmapped)} tensors under the backbone prefix {prefix!r} are not ResNet "
                              "tensors (unmapped):" + _listing(unmapped))
    if duplicated:
        raise ConversionError("duplicated backbone tensors:" + _listing(duplicated))
    bad = [format_key(k, "d2") for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ConversionError("backbone tensors with NaN/Inf values:" + _listing(bad))
    try:
        arch = infer_arch(tensors)
        problems = shape_problems(tensors, arch)
    except ArchitectureError as e:
        raise ConversionError(f"the {layout.name} backbone under {prefix!r} is not a complete ResNet: {e}") from None
    if problems:
        raise ConversionError(f"the {layout.name} backbone under {prefix!r} is incomplete or inconsistent "
                              f"as {arch.describe()}:" + _listing(problems))
    return Conversion(layout, encoder, prefix, arch, tensors, mapped, dict(dropped))


def check_target(conversion: Conversion, target: ResNetArch) -> None:
    """Raises ConversionError when the weights do not fit the target architecture."""
    if conversion.arch != target:
        problems = shape_problems(conversion.tensors, target)
        raise ConversionError(
            f"the checkpoint holds {conversion.arch.describe()} but the target is {target.describe()}; "
            f"{len(problems)} tensors would be missing or misshapen:" + _listing(problems, 6))


def to_d2_checkpoint(conversion: Conversion, source: str = "") -> dict:
    """The pickle detectron2's DetectionCheckpointer loads (name-matching heuristics on)."""
    model = {format_key(k, "d2"): v.numpy() for k, v in sorted(conversion.tensors.items())
             if k.param != "num_batches_tracked"}
    info = {"source": source, "layout": conversion.layout.name, "encoder": conversion.encoder,
            "arch": conversion.arch.describe(), "config": required_config_lines(conversion.arch)}
    return {"model": model, "__author__": "plrc_d2", "matching_heuristics": True, "plrc_d2_info": info}


def to_torchvision_state_dict(conversion: Conversion) -> Dict[str, torch.Tensor]:
    """torchvision ResNet names; BN counters are filled in (0) if the source had none."""
    out = {format_key(k, "torchvision"): v.clone() for k, v in sorted(conversion.tensors.items())}
    for k in list(conversion.tensors):
        if k.norm and k.param == "running_mean":
            counter = format_key(k._replace(param="num_batches_tracked"), "torchvision")
            out.setdefault(counter, torch.tensor(0, dtype=torch.long))
    return out


def required_config_lines(arch: ResNetArch) -> List[str]:
    return ["INPUT.FORMAT RGB", f"MODEL.PIXEL_MEAN {TORCHVISION_PIXEL_MEAN}", f"MODEL.PIXEL_STD {TORCHVISION_PIXEL_STD}",
            "MODEL.RESNETS.STRIDE_IN_1X1 False"] + arch.config_lines()
