"""The compiled CPU distillation kernel (plrc_d2/modeling/native.py, csrc/distill_cpu.c): same loss and gradient
as the PyTorch path at every thread count and with its teacher-row cache; a clear fallback or error without a
working compiler."""
import json
import logging
import os
import stat

import pytest
import torch
from torch.nn import functional as F

from plrc_d2.modeling import native
from plrc_d2.modeling.losses import CellTables, cell_table, matched_distillation_loss
from plrc_d2.modeling.matching import cell_taps, match_cells, tile_order


@pytest.fixture
def fresh_kernel(tmp_path, monkeypatch):
    """An empty kernel cache and no memory of an earlier build (restored afterwards)."""
    monkeypatch.setenv("PLRC_D2_CACHE", str(tmp_path / "cache"))
    native._load.cache_clear()
    monkeypatch.setattr(native.load_distill_kernel, "_warned", False, raising=False)
    yield tmp_path
    native._load.cache_clear()


def _case(seed=0, n=3, h=3, m=12, c=16, nl=24):
    """Three images of a small model: V_q and V_d crops of different sizes (several pairs per V_q cell and
    V_d cells shared by several V_q cells), pairs in the model's tile order."""
    gen = torch.Generator().manual_seed(seed)
    unit = lambda: F.normalize(torch.randn(n, c, h, h, generator=gen), dim=1)  # noqa: E731
    u_q, u_k, u_d = unit(), unit(), unit()
    w_q, w_k = F.normalize(torch.randn(nl, c, generator=gen), dim=1), F.normalize(torch.randn(nl, c, generator=gen), dim=1)
    boxes_q = torch.tensor([[0.1, 0.1, 0.7, 0.8], [0.9, 0.2, 0.3, 0.9], [0.0, 0.0, 0.5, 0.5]])
    boxes_d = torch.tensor([[0.2, 0.0, 0.8, 0.6], [0.2, 0.3, 0.8, 0.8], [0.1, 0.1, 0.7, 0.7]])
    iq, id_ = match_cells(boxes_q, boxes_d, m, 0.5)
    order = tile_order(iq, m, m // h)
    iq, id_ = iq[order], id_[order]
    cells, counts = torch.unique_consecutive(iq, return_counts=True)
    table = cell_table(u_q, u_k, w_q, m, 128.0).requires_grad_()
    student = CellTables(table, *cell_taps(cells, m, (h, h)), counts, image=cells // (m * m), rows_per_image=h * h)
    teacher = CellTables(cell_table(u_d, u_k, w_k, m, 128.0), *cell_taps(id_, m, (h, h)), cells=id_)
    center = torch.randn(1, table.shape[1], generator=gen) * 0.1
    return student, teacher, center


def _loss_and_grad(student, teacher, center, kernel, temps=(0.1, 0.04)):
    loss = matched_distillation_loss(student, teacher, center, *temps, chunk_size=16, kernel=kernel)
    return loss.item(), torch.autograd.grad(loss, student.table)[0]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("with_ids", [True, False])
def test_compiled_equals_torch(threads, with_ids):
    student, teacher, center = _case()
    assert teacher.cells.unique().numel() < teacher.cells.numel()  # the teacher-row cache has hits to make
    assert int(student.counts.max()) > 1  # cells with several pairs
    assert teacher.cells.unique().numel() > 8  # and more V_d cells than cache slots: evictions and collisions
    want, g_want = _loss_and_grad(student, teacher, center, "torch")
    if not with_ids:
        teacher.cells = None
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got, g_got = _loss_and_grad(student, teacher, center, "compiled")
    finally:
        torch.set_num_threads(before)
    assert got == pytest.approx(want, rel=1e-5)
    assert torch.allclose(g_got, g_want, atol=1e-7, rtol=1e-4)


def test_compiled_survives_extreme_logits():
    # teacher temperature 1e-3: base-2 logits in the thousands; every row is shifted by its max before exp2
    student, teacher, center = _case(seed=1)
    want, g_want = _loss_and_grad(student, teacher, center, "torch", temps=(0.002, 0.001))
    got, g_got = _loss_and_grad(student, teacher, center, "compiled", temps=(0.002, 0.001))
    assert torch.isfinite(g_got).all()
    assert got == pytest.approx(want, rel=1e-5)
    assert torch.allclose(g_got, g_want, atol=1e-6, rtol=1e-3)


def test_kernel_is_built_once_and_cached(fresh_kernel):
    assert native.load_distill_kernel(required=True) is not None
    built = os.listdir(fresh_kernel / "cache")
    assert len(built) == 1 and built[0].startswith("distill_cpu-") and built[0].endswith(".so")
    mtime = os.path.getmtime(fresh_kernel / "cache" / built[0])
    native._load.cache_clear()
    assert native.load_distill_kernel(required=True) is not None
    assert os.listdir(fresh_kernel / "cache") == built  # no second build, no temporary left behind
    assert os.path.getmtime(fresh_kernel / "cache" / built[0]) == mtime
    assert native.distill_kernel_status() == "built"


def test_no_compiler_falls_back_to_torch_ops(fresh_kernel, monkeypatch, caplog):
    student, teacher, center = _case()
    want, g_want = _loss_and_grad(student, teacher, center, "torch")
    monkeypatch.setenv("CC", "no-such-compiler-plrc")
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        got, g_got = _loss_and_grad(student, teacher, center, "auto")
        _loss_and_grad(student, teacher, center, "auto")
    assert got == want and torch.equal(g_got, g_want)  # the PyTorch path itself
    warnings = [r for r in caplog.records if "using PyTorch ops" in r.getMessage()]
    assert len(warnings) == 1 and "no C compiler" in warnings[0].getMessage()  # said once, not every step
    with pytest.raises(native.NativeKernelError, match="no C compiler"):
        _loss_and_grad(student, teacher, center, "compiled")
    assert "unavailable" in native.distill_kernel_status()


def test_failing_compiler_is_reported(fresh_kernel, monkeypatch):
    cc = fresh_kernel / "broken-cc"
    cc.write_text("#!/bin/sh\n[ \"$1\" = --version ] && exit 0\necho 'error: out of disk' >&2\nexit 1\n")
    cc.chmod(cc.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CC", str(cc))
    student, teacher, center = _case()
    with pytest.raises(native.NativeKernelError, match="out of disk"):
        _loss_and_grad(student, teacher, center, "compiled")
    assert os.listdir(fresh_kernel / "cache") == []  # no partial library left to load later


def test_unknown_kernel_name_is_rejected():
    student, teacher, center = _case()
    with pytest.raises(ValueError, match="kernel must be one of"):
        matched_distillation_loss(student, teacher, center, 0.1, 0.04, 16, kernel="fast")


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_non_finite_tables_give_a_non_finite_loss(side):
    # the model's non-finite-loss check must see a NaN from either side, as with the PyTorch ops
    student, teacher, center = _case()
    tables = student if side == "student" else teacher
    with torch.no_grad():
        tables.table[int(tables.rows[0, 0])] = float("nan")
    for kernel in ("torch", "compiled"):
        loss = matched_distillation_loss(student, teacher, center, 0.1, 0.04, chunk_size=16, kernel=kernel)
        assert not torch.isfinite(loss), kernel


def test_distill_benchmark_without_compiler_times_torch_ops_only(fresh_kernel, monkeypatch, capsys):
    from plrc_d2.benchmark.distill import main

    monkeypatch.setenv("CC", "no-such-compiler-plrc")
    out = fresh_kernel / "distill.json"
    assert main(["--batch", "2", "--size", "64", "--map-size", "8", "--logits", "16", "--iters", "1", "--warmup", "0",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["kernels"]) == {"torch"} and "speedup_compiled_vs_torch" not in res
    assert res["compiled_kernel"].startswith("unavailable (no C compiler")
    assert "compiled CPU kernel: unavailable (no C compiler" in capsys.readouterr().out
