"""Where a ResNet backbone lives inside a checkpoint, and how its tensors are named.

This file is the one place that knows checkpoint layouts. A layout says under which key prefix the
online (query) and the momentum (key) backbone sit and whether the names below that prefix follow
detectron2's ResNet (`stem.conv1.weight`, `res2.0.conv1.norm.weight`, `res2.0.shortcut.weight`) or
torchvision's (`conv1.weight`, `bn1.weight`, `layer1.0.bn1.weight`, `layer1.0.downsample.0.weight`).

A parsed tensor name is a `ResNetKey`: (stage 1..5, block, layer, norm, param), stage 1 = the stem.
Both namings are parsed into it and formatted from it, so renaming is exact in both directions and a
name that fits neither pattern is reported as unmapped instead of being passed through.
"""
import re
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

__all__ = ["Layout", "LAYOUTS", "ResNetKey", "parse_key", "format_key", "NORM_PARAMS", "STEM_KEY"]

NORM_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class Layout:
    """A checkpoint layout. Prefixes are tried in order; the first present in the checkpoint is used."""

    name: str
    naming: str  # "d2" or "torchvision": the tensor names below the prefix
    online: Tuple[str, ...]  # prefixes of the online (query) backbone
    momentum: Tuple[str, ...]  # prefixes of the momentum (key) backbone; () if the layout has none
    description: str


# Order matters only for the error message; detection requires exactly one layout to match.
LAYOUTS = (
    Layout(
        "plrc_d2", "d2",
        # plrc_d2.modeling.meta_arch.PLRC: self.encoder / self.momentum_encoder, each a PLRCEncoder whose
        # `backbone` is detectron2's build_resnet_backbone (heads: dense_head, distill_head; plus queue, center)
        online=("encoder.backbone.",), momentum=("momentum_encoder.backbone.",),
        description="plrc_d2 pre-training checkpoint (DetectionCheckpointer .pth, {'model': state_dict})",
    ),
    Layout(
        "plrc_reference", "torchvision",
        online=("module.encoder_q.enc.",), momentum=("module.encoder_k.enc.",),
        description="reference PLRC release ({'state_dict': module.encoder_q.enc.<torchvision ResNet>})",
    ),
    Layout(
        "moco", "torchvision",
        online=("module.encoder_q.",), momentum=("module.encoder_k.",),
        description="MoCo-style ({'state_dict': module.encoder_q.<torchvision ResNet>})",
    ),
    Layout(
        "detectron2_resnet", "d2", online=("",), momentum=(),
        description="detectron2 ResNet state dict (e.g. this converter's own d2 output)",
    ),
    Layout(
        "torchvision", "torchvision", online=("",), momentum=(),
        description="plain torchvision ResNet state dict",
    ),
)

# The stem convolution: its presence under a prefix is what detection looks for.
STEM_KEY = {"d2": "stem.conv1.weight", "torchvision": "conv1.weight"}
# A second key of the first block makes detection robust to unrelated `conv1.weight` tensors.
FIRST_BLOCK_KEY = {"d2": "res2.0.conv1.weight", "torchvision": "layer1.0.conv1.weight"}


class ResNetKey(NamedTuple):
    """One ResNet tensor, independent of naming. stage 1 is the stem (block -1, layer "conv1")."""

    stage: int  # 1 (stem) .. 5 (res5 / layer4)
    block: int  # block index inside the stage; -1 for the stem
    layer: str  # "conv1" | "conv2" | "conv3" | "shortcut"
    norm: bool  # the norm after `layer` (True) or the convolution itself (False)
    param: str  # "weight" for convolutions; one of NORM_PARAMS for norms


_NORM = "|".join(NORM_PARAMS)
_D2_STEM = re.compile(rf"stem\.conv1\.(?:(?P<norm>norm)\.(?P<np>{_NORM})|weight)$")
_D2_BLOCK = re.compile(
    rf"res(?P<stage>[2-5])\.(?P<block>\d+)\.(?P<layer>conv[123]|shortcut)\.(?:(?P<norm>norm)\.(?P<np>{_NORM})|weight)$"
)
_TV_STEM = re.compile(rf"(?:conv1\.weight|bn1\.(?P<np>{_NORM}))$")
_TV_BLOCK = re.compile(
    rf"layer(?P<stage>[1-4])\.(?P<block>\d+)\."
    rf"(?:conv(?P<conv>[123])\.weight|bn(?P<bn>[123])\.(?P<np>{_NORM})"
    rf"|downsample\.0\.weight|downsample\.1\.(?P<dsnp>{_NORM}))$"
)


def parse_key(name: str, naming: str) -> Optional[ResNetKey]:
    """Parses a tensor name (prefix already removed); None when it is not a ResNet backbone tensor."""
    if naming == "d2":
        m = _D2_STEM.fullmatch(name)
        if m:
            return ResNetKey(1, -1, "conv1", bool(m["norm"]), m["np"] or "weight")
        m = _D2_BLOCK.fullmatch(name)
        if m:
            return ResNetKey(int(m["stage"]), int(m["block"]), m["layer"], bool(m["norm"]), m["np"] or "weight")
        return None
    if naming == "torchvision":
        m = _TV_STEM.fullmatch(name)
        if m:
            return ResNetKey(1, -1, "conv1", m["np"] is not None, m["np"] or "weight")
        m = _TV_BLOCK.fullmatch(name)
        if not m:
            return None
        stage, block = int(m["stage"]) + 1, int(m["block"])
        if m["conv"]:
            return ResNetKey(stage, block, f"conv{m['conv']}", False, "weight")
        if m["bn"]:
            return ResNetKey(stage, block, f"conv{m['bn']}", True, m["np"])
        if m["dsnp"]:
            return ResNetKey(stage, block, "shortcut", True, m["dsnp"])
        return ResNetKey(stage, block, "shortcut", False, "weight")
    raise ValueError(f"unknown naming {naming!r}")


def format_key(key: ResNetKey, naming: str) -> str:
    """The inverse of parse_key."""
    if naming == "d2":
        head = "stem.conv1" if key.stage == 1 else f"res{key.stage}.{key.block}.{key.layer}"
        return f"{head}.norm.{key.param}" if key.norm else f"{head}.weight"
    if naming == "torchvision":
        if key.stage == 1:
            return f"bn1.{key.param}" if key.norm else "conv1.weight"
        head = f"layer{key.stage - 1}.{key.block}"
        if key.layer == "shortcut":
            return f"{head}.downsample.1.{key.param}" if key.norm else f"{head}.downsample.0.weight"
        j = key.layer[-1]
        return f"{head}.bn{j}.{key.param}" if key.norm else f"{head}.conv{j}.weight"
    raise ValueError(f"unknown naming {naming!r}")
