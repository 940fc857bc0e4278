"""PLRC meta-architecture on a tiny CPU config: one step, EMA, queue, config plumbing, hooks, guard."""
import itertools

import pytest
import torch

from detectron2.engine import SimpleTrainer, TrainerBase
from detectron2.modeling import build_model

from plrc_d2.engine.hooks import NonFiniteLossGuard, PLRCScheduleHook, build_plrc_hooks, momentum_at, \
    teacher_temperature_at

from plrc_meta_helpers import inputs, tiny_cfg, tiny_model  # noqa: E402

LOSS_KEYS = {"loss_plrc_image", "loss_plrc_point", "loss_plrc_distill"}


def test_one_step_losses_ema_queue(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    model = tiny_model()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    queue0 = model.queue.queue.clone()
    losses = model(inputs())
    assert set(losses) == LOSS_KEYS
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.momentum_encoder.parameters())
    # queue advanced by the batch: 4 new rows at the front, the rest untouched
    assert model.queue.ptr.item() == 4
    assert not torch.allclose(model.queue.queue[:4], queue0[:4]) and torch.equal(model.queue.queue[4:], queue0[4:])
    assert torch.allclose(model.queue.queue[:4].norm(dim=1), torch.ones(4))
    assert model.center.abs().sum() > 0 and model.last_report.read()["plrc_matched_pairs"] > 0
    # EMA: after an optimizer step the next forward moves the momentum encoder toward the online one
    opt.step()
    before = [p.clone() for p in model.momentum_encoder.parameters()]
    model.update_schedule(iteration=1, teacher_temperature=0.05, momentum=0.9)
    model(inputs(seed=2))
    moved = [not torch.equal(a, b) for a, b in zip(before, model.momentum_encoder.parameters())]
    assert any(moved)
    for b, k, q in zip(before, model.momentum_encoder.parameters(), model.encoder.parameters()):
        assert torch.allclose(k, 0.9 * b + 0.1 * q, atol=1e-6)
    assert model.queue.ptr.item() == 8


def test_config_values_reach_model(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    model = tiny_model("MODEL.PLRC.EMBED_DIM", 24, "MODEL.PLRC.QUEUE_SIZE", 12, "MODEL.PLRC.DISTILL_DIM", 16,
                       "MODEL.PLRC.DISTILL_NUM_LOGITS", 40, "MODEL.PLRC.DENSE_HIDDEN_DIM", 20,
                       "MODEL.PLRC.DISTILL_HIDDEN_DIM", 28, "MODEL.PLRC.IMAGE_TEMPERATURE", 0.3,
                       "MODEL.PLRC.POINT_BASE_TEMPERATURE", 0.05, "MODEL.PLRC.MOMENTUM", 0.99,
                       "MODEL.PLRC.CENTER_MOMENTUM", 0.8, "MODEL.PLRC.DISTILL_LOSS_WEIGHT", 0.21,
                       "MODEL.PLRC.MATCH_RADIUS", 0.7, "MODEL.PLRC.ZERO_INIT_RESIDUAL", False,
                       "MODEL.PLRC.DISTILL_CHUNK_PAIRS", 7, "MODEL.PLRC.SHUFFLE_BN", False, "SEED", 5)
    p = model.params
    assert model.queue.queue.shape == (12, 24) and model.center.shape == (1, 36 + 40)
    assert model.encoder.dense_head.fc1.out_channels == 20 and model.encoder.distill_head.mlp[0].out_channels == 28
    assert (p.image_temperature, p.point_base_temperature, p.momentum, p.center_momentum, p.distill_weight,
            p.match_radius, p.distill_chunk_pairs, p.shuffle_bn, p.seed) == (0.3, 0.05, 0.99, 0.8, 0.21, 0.7, 7,
                                                                              False, 5)
    assert model.momentum == 0.99
    block = model.encoder.backbone.res2[0]
    assert block.conv2.norm.weight.abs().sum() > 0  # ZERO_INIT_RESIDUAL False
    zeroed = tiny_model().encoder.backbone.res2[0].conv2.norm.weight
    assert zeroed.abs().sum() == 0
    losses = model(inputs())  # chunked distillation path (7 pairs per chunk) runs
    sum(losses.values()).backward()


def test_eval_and_embedding_helpers(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    model = tiny_model()
    batch = inputs(2)
    images = [d["views"][0]["image"] for d in batch]
    bn = model.encoder.backbone.stem.conv1.norm
    stats = bn.running_mean.clone()
    dense = model.dense_embeddings(images)
    u = model.distill_embeddings(images, momentum=True)
    assert dense.shape == (2, 128, 1, 1) and u.shape[:2] == (2, 32)
    assert torch.allclose(dense.norm(dim=1), torch.ones(2, 1, 1), atol=1e-5)
    assert torch.equal(bn.running_mean, stats) and model.encoder.training
    model.eval()
    feats = model(batch)
    assert set(feats) == {"res5"} and feats["res5"].shape == (2, 512, 1, 1)


def test_bad_input_is_named(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    model = tiny_model()
    batch = inputs(2)
    batch[0]["views"] = batch[0]["views"][:1]
    with pytest.raises(ValueError, match="views"):
        model(batch)


def test_schedules():
    assert teacher_temperature_at(0, 100, 0.04, 0.07, 0.3) == pytest.approx(0.04)
    assert teacher_temperature_at(15, 100, 0.04, 0.07, 0.3) == pytest.approx(0.055)
    assert teacher_temperature_at(30, 100, 0.04, 0.07, 0.3) == pytest.approx(0.07)
    assert teacher_temperature_at(99, 100, 0.04, 0.07, 0.3) == pytest.approx(0.07)
    assert teacher_temperature_at(0, 100, 0.04, 0.07, 0.0) == pytest.approx(0.07)
    assert momentum_at(50, 100, 0.99, "constant") == 0.99
    assert momentum_at(0, 100, 0.99, "cosine") == pytest.approx(0.99)
    assert momentum_at(50, 100, 0.99, "cosine") == pytest.approx(0.995)
    assert momentum_at(100, 100, 0.99, "cosine") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="MOMENTUM_SCHEDULE"):
        momentum_at(0, 1, 0.9, "linear")


def _trainer(model, data, hooks):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    trainer = SimpleTrainer(model, itertools.repeat(data), opt)
    trainer.register_hooks(hooks)
    return trainer


def test_hooks_drive_schedule_and_metrics(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    cfg = tiny_cfg("SOLVER.MAX_ITER", 4, "MODEL.PLRC.MOMENTUM_SCHEDULE", "cosine")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    trainer = _trainer(model, inputs(), build_plrc_hooks(cfg, trainer=None))
    trainer.train(0, 3)
    hist = trainer.storage.histories()
    taus = [v for v, _ in hist["plrc_teacher_temperature"].values()]
    assert taus == pytest.approx([0.04, 0.07, 0.07])  # warm-up round(0.3 * 4) = 1 iteration
    assert hist["plrc_momentum"].values()[-1][0] == pytest.approx(momentum_at(2, 4, 0.999, "cosine"))
    for key in ("plrc_image_acc", "plrc_point_acc", "plrc_matched_pairs"):
        assert len(hist[key].values()) == 3
    assert model.iteration == 2


def test_non_finite_loss_stops_naming_term_and_iteration(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    model = tiny_model()
    data = inputs()
    model.center[0, 0] = float("nan")  # a corrupted centre -> only the distillation term is NaN
    params_before = [p.clone() for p in model.encoder.parameters()]
    trainer = _trainer(model, data, [PLRCScheduleHook(max_iter=5, teacher_start=0.04, teacher_end=0.07,
                                                      teacher_warmup=0.3, momentum=0.99,
                                                      momentum_schedule="constant"), NonFiniteLossGuard()])
    with pytest.raises(FloatingPointError, match=r"iteration 0: loss_plrc_distill=nan"):
        trainer.train(0, 5)
    assert all(torch.equal(a, b) for a, b in zip(params_before, model.encoder.parameters()))  # no update


def test_guard_reaches_inner_trainer_of_default_trainer_layout(repo_root, monkeypatch):
    """DefaultTrainer runs after_backward only on its inner SimpleTrainer: the guard attaches a probe."""
    monkeypatch.chdir(repo_root)
    model = tiny_model()
    data = inputs()
    model.center[0, 1] = float("nan")

    class Outer(TrainerBase):
        def __init__(self):
            super().__init__()
            self._trainer = _trainer(model, data, [])
            self.model = model

        def run_step(self):
            self._trainer.iter = self.iter
            self._trainer.run_step()

    outer = Outer()
    outer.register_hooks([NonFiniteLossGuard()])
    with pytest.raises(FloatingPointError, match="Non-finite PLRC loss at iteration 3"):
        outer.train(3, 6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_step_matches_cpu(repo_root, monkeypatch):
    """Same weights, same inputs: the three losses and the online gradients agree across devices (fp32,
    TF32 off), so nothing device-specific (sparse kernels, chunk sizes, matching upload) changes the maths."""
    monkeypatch.chdir(repo_root)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    cpu = tiny_model()
    gpu = tiny_model("MODEL.DEVICE", "cuda")
    gpu.load_state_dict(cpu.state_dict())
    results = []
    for model in (cpu, gpu):
        losses = model(inputs())
        sum(losses.values()).backward()
        grads = [p.grad.detach().cpu() for p in model.encoder.parameters()]
        results.append(({k: v.item() for k, v in losses.items()}, grads, model.center.cpu()))
    (l_cpu, g_cpu, c_cpu), (l_gpu, g_gpu, c_gpu) = results
    for k in LOSS_KEYS:
        assert l_gpu[k] == pytest.approx(l_cpu[k], rel=1e-4, abs=1e-5), k
    for a, b in zip(g_gpu, g_cpu):  # whole-tensor relative error: cuDNN and MKL sum in different orders
        assert (a - b).norm() <= 1e-3 * b.norm() + 1e-6
    assert torch.allclose(c_gpu, c_cpu, atol=1e-5)
