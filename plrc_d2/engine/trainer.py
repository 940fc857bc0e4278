"""The Trainer used by tools/train_net.py for pre-training (META_ARCHITECTURE "PLRC") and for fine-tuning
stock detectron2 meta-architectures on converted weights."""
import os

from detectron2.engine import DefaultTrainer
from detectron2.engine import defaults as _d2_defaults
from detectron2.utils import comm
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, PascalVOCDetectionEvaluator
from detectron2.data import MetadataCatalog

__all__ = ["Trainer", "is_pretraining"]

_d2_create_ddp_model = _d2_defaults.create_ddp_model


def _create_ddp_model(model, **kwargs):
    """detectron2's create_ddp_model pins DDP to the local GPU (device_ids=[local rank]); a CPU model
    under gloo must pass none. DefaultTrainer calls it from its constructor, hence the module-level swap."""
    if comm.get_world_size() > 1 and next(model.parameters()).device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return _d2_create_ddp_model(model, **kwargs)


_d2_defaults.create_ddp_model = _create_ddp_model


def is_pretraining(cfg) -> bool:
    return cfg.MODEL.META_ARCHITECTURE == "PLRC"


class Trainer(DefaultTrainer):
    @classmethod
    def build_train_loader(cls, cfg):
        from plrc_d2.data import build_plrc_train_loader, ensure_datasets_registered

        ensure_datasets_registered(cfg.DATASETS.TRAIN, cfg.OUTPUT_DIR)
        if is_pretraining(cfg):
            return build_plrc_train_loader(cfg)
        return super().build_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        from plrc_d2.data import ensure_datasets_registered

        ensure_datasets_registered([dataset_name], cfg.OUTPUT_DIR)
        return super().build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
        if evaluator_type == "pascal_voc":
            return PascalVOCDetectionEvaluator(dataset_name)
        if evaluator_type == "coco":
            return DatasetEvaluators([COCOEvaluator(dataset_name, output_dir=output_folder)])
        raise NotImplementedError(f"No evaluator for dataset {dataset_name} of type {evaluator_type}")

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        # The pre-training stream is a function of (SEED, sample position): start it where the run stopped.
        if hasattr(self.data_loader, "set_start_iter"):
            self.data_loader.set_start_iter(self.start_iter)

    def build_hooks(self):
        hooks = super().build_hooks()
        if is_pretraining(self.cfg):
            from plrc_d2.engine.hooks import build_plrc_hooks

            # Schedules must run before the periodic writer/checkpointer that super() appended last.
            extra = build_plrc_hooks(self.cfg, self)
            hooks = hooks[:-1] + extra + hooks[-1:] if hooks else extra
        return hooks
