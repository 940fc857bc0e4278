"""Pre-training checkpoint -> detectron2 / torchvision ResNet weights (tools/convert_plrc_to_d2.py),
and the load-time check that fine-tuning weights really initialise the backbone."""
from .architecture import ArchitectureError, ResNetArch, arch_for_depth, arch_from_config, infer_arch
from .convert import (
    Conversion, ConversionError, check_target, extract_backbone, extract_state_dict, load_checkpoint_file,
    required_config_lines, to_d2_checkpoint, to_torchvision_state_dict,
)
from .layouts import LAYOUTS, Layout, ResNetKey, format_key, parse_key
from .verify import assert_backbone_loaded, backbone_load_report

__all__ = [
    "ArchitectureError", "ResNetArch", "arch_for_depth", "arch_from_config", "infer_arch",
    "Conversion", "ConversionError", "check_target", "extract_backbone", "extract_state_dict",
    "load_checkpoint_file", "required_config_lines", "to_d2_checkpoint", "to_torchvision_state_dict",
    "LAYOUTS", "Layout", "ResNetKey", "format_key", "parse_key",
    "assert_backbone_loaded", "backbone_load_report",
]
