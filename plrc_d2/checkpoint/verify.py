"""Load-time guard: does MODEL.WEIGHTS really initialise the backbone of a detectron2 model?

detectron2 only logs a warning for weights that match nothing and then trains from random init.
`backbone_load_report` replays what `DetectionCheckpointer` does with a weights file (the same
name-matching heuristics, `align_and_update_state_dicts`) and lists the model's ResNet tensors
(stem, res2..res5, wherever they sit: `backbone.bottom_up.*`, `backbone.*`, `roi_heads.res5.*`) that
would keep their random init. `assert_backbone_loaded` raises when that list is not empty.
"""
import re
from typing import Dict, List

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts

__all__ = ["backbone_load_report", "assert_backbone_loaded", "is_resnet_tensor"]

# A ResNet tensor of a detectron2 model: stem.* or resK.<block>.* anywhere in the name. An extra
# norm after res5 (roi_heads.res5.norm.*, Res5ROIHeadsExtraNorm) is new and legitimately random.
_RESNET_TENSOR = re.compile(r"(^|\.)(stem\.|res[2-5]\.\d+\.)")


def is_resnet_tensor(name: str) -> bool:
    return bool(_RESNET_TENSOR.search(name)) and not name.endswith("num_batches_tracked")


def backbone_load_report(model: torch.nn.Module, weights: str) -> Dict[str, List[str]]:
    """{"loaded": [...], "missing": [...]}: the model's ResNet tensors the weights file fills / leaves."""
    checkpointer = DetectionCheckpointer(model)
    checkpoint = checkpointer._load_file(weights)  # the same reader detectron2 uses for MODEL.WEIGHTS
    state = {k: torch.as_tensor(v) for k, v in checkpoint["model"].items()}
    model_state = model.state_dict()
    if checkpoint.get("matching_heuristics", False):
        state = align_and_update_state_dicts(model_state, state,
                                             c2_conversion=checkpoint.get("__author__") == "Caffe2")
    names = [k for k in model_state if is_resnet_tensor(k)]
    loaded = [k for k in names if k in state and tuple(state[k].shape) == tuple(model_state[k].shape)]
    return {"loaded": loaded, "missing": [k for k in names if k not in set(loaded)]}


def assert_backbone_loaded(model: torch.nn.Module, weights: str) -> List[str]:
    """Raises RuntimeError naming the ResNet tensors `weights` leaves at random init; returns the loaded."""
    report = backbone_load_report(model, weights)
    if not report["loaded"] or report["missing"]:
        missing = report["missing"]
        raise RuntimeError(f"{weights} initialises {len(report['loaded'])} ResNet tensors of the model and leaves "
                           f"{len(missing)} at random init, e.g. {missing[:5]}. Convert pre-training checkpoints "
                           "with tools/convert_plrc_to_d2.py and set DEPTH/RES2_OUT_CHANNELS as it prints.")
    return report["loaded"]
