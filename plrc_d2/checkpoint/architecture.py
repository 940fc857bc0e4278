"""Which ResNet a set of backbone tensors is, and whether it fits a target detectron2 config.

The expected tensors of an architecture come from detectron2's own `build_resnet_backbone` (built on
the meta device: names and shapes only, no memory), so the check cannot drift from what a stock
config instantiates.
"""
from dataclasses import dataclass
from typing import Dict, List, Mapping, Tuple

import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from .layouts import ResNetKey, format_key

__all__ = [
    "ResNetArch", "ArchitectureError", "infer_arch", "arch_for_depth", "arch_from_config",
    "expected_shapes", "shape_problems", "config_problems", "TORCHVISION_PIXEL_MEAN", "TORCHVISION_PIXEL_STD",
]

# Block counts of res2..res5 per depth (detectron2's resnet.py table), and the block type.
_DEPTHS = {
    (False, (2, 2, 2, 2)): 18, (False, (3, 4, 6, 3)): 34,
    (True, (3, 4, 6, 3)): 50, (True, (3, 4, 23, 3)): 101, (True, (3, 8, 36, 3)): 152,
}
TORCHVISION_PIXEL_MEAN = [123.675, 116.28, 103.53]  # RGB, 0-255
TORCHVISION_PIXEL_STD = [58.395, 57.12, 57.375]


class ArchitectureError(ValueError):
    """The tensors are not a known ResNet, or not the ResNet the target config builds."""


@dataclass(frozen=True)
class ResNetArch:
    """The MODEL.RESNETS values that determine tensor names and shapes."""

    depth: int
    stem_out_channels: int = 64
    res2_out_channels: int = 256
    num_groups: int = 1
    width_per_group: int = 64

    def describe(self) -> str:
        extra = f", {self.num_groups}x{self.width_per_group}d" if self.num_groups > 1 else ""
        return f"ResNet-{self.depth} (RES2_OUT_CHANNELS {self.res2_out_channels}{extra})"

    def config_lines(self) -> List[str]:
        lines = [f"MODEL.RESNETS.DEPTH {self.depth}", f"MODEL.RESNETS.RES2_OUT_CHANNELS {self.res2_out_channels}"]
        if self.stem_out_channels != 64:
            lines.append(f"MODEL.RESNETS.STEM_OUT_CHANNELS {self.stem_out_channels}")
        if self.num_groups != 1 or self.width_per_group != 64:
            lines += [f"MODEL.RESNETS.NUM_GROUPS {self.num_groups}",
                      f"MODEL.RESNETS.WIDTH_PER_GROUP {self.width_per_group}"]
        return lines


def arch_for_depth(depth: int) -> ResNetArch:
    """detectron2's default widths for a depth (RES2_OUT_CHANNELS must be 64 for R18/R34)."""
    if depth not in (18, 34, 50, 101, 152):
        raise ArchitectureError(f"--depth {depth}: detectron2 builds ResNet-18/34/50/101/152")
    return ResNetArch(depth, res2_out_channels=64 if depth < 50 else 256)


def infer_arch(tensors: Mapping[ResNetKey, torch.Tensor]) -> ResNetArch:
    """The architecture the tensors were cut from (block counts and widths); raises if none fits."""
    blocks: Dict[int, set] = {s: set() for s in range(2, 6)}
    for key in tensors:
        if key.stage > 1:
            blocks[key.stage].add(key.block)
    counts = tuple(len(blocks[s]) for s in range(2, 6))
    for s in range(2, 6):
        if blocks[s] != set(range(len(blocks[s]))):
            raise ArchitectureError(f"res{s} has blocks {sorted(blocks[s])}: block indices are not contiguous")
    bottleneck = any(k.layer == "conv3" for k in tensors)
    depth = _DEPTHS.get((bottleneck, counts))
    if depth is None:
        kind = "bottleneck" if bottleneck else "basic"
        raise ArchitectureError(f"{kind} blocks per stage res2..res5 = {counts} match no ResNet depth "
                                f"(18/34: basic 2,2,2,2 / 3,4,6,3; 50/101/152: bottleneck 3,4,6,3 / 3,4,23,3 / 3,8,36,3)")

    def shape(stage, block, layer):
        key = ResNetKey(stage, block, layer, False, "weight")
        if key not in tensors:
            raise ArchitectureError(f"missing tensor {format_key(key, 'd2')}")
        return tuple(tensors[key].shape)

    stem = shape(1, -1, "conv1")[0]
    if not bottleneck:
        return ResNetArch(depth, stem, shape(2, 0, "conv2")[0])
    bottleneck_channels = shape(2, 0, "conv1")[0]
    groups = bottleneck_channels // max(1, shape(2, 0, "conv2")[1])
    return ResNetArch(depth, stem, shape(2, 0, "conv3")[0], groups, bottleneck_channels // max(1, groups))


def arch_from_config(cfg) -> ResNetArch:
    r = cfg.MODEL.RESNETS
    return ResNetArch(r.DEPTH, r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS, r.NUM_GROUPS, r.WIDTH_PER_GROUP)


def expected_shapes(arch: ResNetArch) -> Dict[str, Tuple[int, ...]]:
    """d2 tensor name -> shape of every ResNet tensor (stem..res5, BN statistics included)."""
    cfg = get_cfg()
    r = cfg.MODEL.RESNETS
    r.DEPTH, r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS = arch.depth, arch.stem_out_channels, arch.res2_out_channels
    r.NUM_GROUPS, r.WIDTH_PER_GROUP = arch.num_groups, arch.width_per_group
    r.NORM, r.OUT_FEATURES, r.STRIDE_IN_1X1 = "BN", ["res5"], False
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    try:
        with torch.device("meta"):
            model = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    except (AssertionError, ValueError, RuntimeError) as e:
        raise ArchitectureError(f"detectron2 cannot build {arch.describe()}: {e}") from None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def shape_problems(tensors: Mapping[ResNetKey, torch.Tensor], arch: ResNetArch) -> List[str]:
    """Missing, unexpected and wrong-shape tensors relative to `arch` (num_batches_tracked is optional)."""
    want = expected_shapes(arch)
    have = {format_key(k, "d2"): tuple(v.shape) for k, v in tensors.items()}
    problems = [f"missing: {k} {s}" for k, s in want.items()
                if k not in have and not k.endswith("num_batches_tracked")]
    problems += [f"not in {arch.describe()}: {k} {s}" for k, s in have.items() if k not in want]
    problems += [f"wrong shape: {k} is {have[k]}, {arch.describe()} needs {s}"
                 for k, s in want.items() if k in have and have[k] != s]
    return problems


def config_problems(cfg) -> List[str]:
    """Settings of a fine-tuning config that contradict how the converted weights were trained."""
    problems = []
    if cfg.INPUT.FORMAT != "RGB":
        problems.append(f"INPUT.FORMAT is {cfg.INPUT.FORMAT}; the weights expect RGB")
    if [round(x, 3) for x in cfg.MODEL.PIXEL_MEAN] != TORCHVISION_PIXEL_MEAN:
        problems.append(f"MODEL.PIXEL_MEAN is {list(cfg.MODEL.PIXEL_MEAN)}; the weights expect {TORCHVISION_PIXEL_MEAN}")
    if [round(x, 3) for x in cfg.MODEL.PIXEL_STD] != TORCHVISION_PIXEL_STD:
        problems.append(f"MODEL.PIXEL_STD is {list(cfg.MODEL.PIXEL_STD)}; the weights expect {TORCHVISION_PIXEL_STD}")
    if cfg.MODEL.RESNETS.STRIDE_IN_1X1:
        problems.append("MODEL.RESNETS.STRIDE_IN_1X1 is True; the weights use the torchvision layout (False)")
    if any(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE):
        problems.append("MODEL.RESNETS.DEFORM_ON_PER_STAGE: deformable stages have tensors these weights lack")
    return problems
