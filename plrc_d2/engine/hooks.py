"""Training hooks of PLRC pre-training, inserted by plrc_d2.engine.trainer.Trainer.

* `PLRCScheduleHook`: before each step sets the teacher temperature and the EMA momentum as pure
  functions of the iteration (a resumed run continues the same curves); after each step writes the
  step's metrics (accuracies, matched pairs, temperature, momentum) to the event storage.
* `NonFiniteLossGuard`: after backward and before the optimizer step, stops the run with a
  FloatingPointError that names the non-finite loss term(s) and the iteration, on every rank.
* `PointPanelHook` (plrc_d2.engine.vis_hook) when PLRC_VIS.PERIOD > 0.
"""
import math
from typing import List

from detectron2.engine import HookBase
from torch.nn.parallel import DistributedDataParallel

__all__ = ["teacher_temperature_at", "momentum_at", "PLRCScheduleHook", "NonFiniteLossGuard", "build_plrc_hooks"]


def teacher_temperature_at(iteration: int, max_iter: int, start: float, end: float, warmup_fraction: float) -> float:
    """tau_t: linear from `start` (iteration 0) to `end` over round(warmup_fraction * max_iter) iterations,
    then constant."""
    warmup = int(round(warmup_fraction * max_iter))
    if warmup <= 0 or iteration >= warmup:
        return float(end)
    return float(start + (end - start) * iteration / warmup)


def momentum_at(iteration: int, max_iter: int, base: float, schedule: str) -> float:
    """EMA momentum m: "constant" = base; "cosine" = 1 - (1 - base) (cos(pi t / T) + 1) / 2 (base -> 1)."""
    if schedule == "constant":
        return float(base)
    if schedule == "cosine":
        frac = min(max(iteration / max(max_iter, 1), 0.0), 1.0)
        return float(1.0 - (1.0 - base) * (math.cos(math.pi * frac) + 1.0) / 2.0)
    raise ValueError(f"Unknown MODEL.PLRC.MOMENTUM_SCHEDULE {schedule!r}: use 'constant' or 'cosine'")


def _unwrap(model):
    return model.module if isinstance(model, DistributedDataParallel) else model


class PLRCScheduleHook(HookBase):
    """Sets the model's per-iteration schedule before each step and publishes its metrics after it."""

    def __init__(self, *, max_iter: int, teacher_start: float, teacher_end: float, teacher_warmup: float,
                 momentum: float, momentum_schedule: str):
        self._max_iter = max_iter
        self._teacher = (teacher_start, teacher_end, teacher_warmup)
        self._momentum = (momentum, momentum_schedule)
        momentum_at(0, max_iter, *self._momentum)  # fail early on an unknown schedule

    def values_at(self, iteration: int):
        start, end, warm = self._teacher
        return (teacher_temperature_at(iteration, self._max_iter, start, end, warm),
                momentum_at(iteration, self._max_iter, *self._momentum))

    def before_step(self):
        tau, m = self.values_at(self.trainer.iter)
        _unwrap(self.trainer.model).update_schedule(iteration=self.trainer.iter, teacher_temperature=tau, momentum=m)

    def after_step(self):
        model = _unwrap(self.trainer.model)
        report = getattr(model, "last_report", None)
        if report is None or report.iteration != self.trainer.iter:
            return
        values = report.read()
        scalars = {k: v for k, v in values.items() if not k.startswith("loss_")}
        scalars["plrc_teacher_temperature"] = model.teacher_temperature
        scalars["plrc_momentum"] = model.momentum
        self.trainer.storage.put_scalars(smoothing_hint=False, **scalars)


class NonFiniteLossGuard(HookBase):
    """Raises FloatingPointError naming the non-finite loss term(s) and the iteration.

    Checks after backward (before the optimizer step, so no update is applied) on every rank. detectron2's
    DefaultTrainer runs `after_backward` only on its inner SimpleTrainer, so the guard attaches a probe
    there. It reads the step's losses from the model's host copy, which detectron2's own per-iteration
    `.item()` of the losses has to wait for anyway: no extra synchronisation.
    """

    def __init__(self):
        self._probe = None

    def before_train(self):
        inner = getattr(self.trainer, "_trainer", None)
        if inner is not None and self._probe is None:
            self._probe = _GuardProbe(self)
            inner.register_hooks([self._probe])

    def after_backward(self):
        if self._probe is None:  # a plain SimpleTrainer calls this hook itself
            self.check(self.trainer)

    @staticmethod
    def check(trainer):
        report = getattr(_unwrap(trainer.model), "last_report", None)
        if report is None:
            return
        values = report.read()
        bad = {k: v for k, v in values.items() if k.startswith("loss_") and not math.isfinite(v)}
        if bad:
            terms = ", ".join(f"{k}={v}" for k, v in bad.items())
            raise FloatingPointError(f"Non-finite PLRC loss at iteration {trainer.iter}: {terms} "
                                     f"(all losses: {values})")


class _GuardProbe(HookBase):
    def __init__(self, guard: NonFiniteLossGuard):
        self._guard_cls = type(guard)

    def after_backward(self):
        self._guard_cls.check(self.trainer)


def build_plrc_hooks(cfg, trainer) -> List[HookBase]:
    """The PLRC hooks for a detectron2 trainer: schedules + metrics, the non-finite loss guard, and the
    training-time point panels when cfg.PLRC_VIS.PERIOD > 0."""
    m = cfg.MODEL.PLRC
    hooks = [
        PLRCScheduleHook(max_iter=cfg.SOLVER.MAX_ITER, teacher_start=m.TEACHER_TEMPERATURE_START,
                         teacher_end=m.TEACHER_TEMPERATURE, teacher_warmup=m.TEACHER_TEMPERATURE_WARMUP,
                         momentum=m.MOMENTUM, momentum_schedule=m.MOMENTUM_SCHEDULE),
        NonFiniteLossGuard(),
    ]
    if cfg.PLRC_VIS.PERIOD > 0:
        from plrc_d2.engine.vis_hook import PointPanelHook

        hooks.append(PointPanelHook.from_config(cfg, trainer))
    return hooks
