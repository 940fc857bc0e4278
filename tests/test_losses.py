"""PLRC losses and cell geometry: hand-computed values, limiting cases, efficient == naive."""
import math

import pytest
import torch
from torch.nn import functional as F

from plrc_d2.modeling.losses import (CellTables, affinity_distillation_loss, cell_table, image_infonce_loss,
                                     matched_distillation_loss, matched_teacher_sum, point_region_contrast_loss)
from plrc_d2.modeling.matching import (cell_centres_wrt_image, cell_taps, match_cells, point_labels, sample_points,
                                      tile_order)

E = torch.tensor


# ---------------------------------------------------------------- image InfoNCE
def test_infonce_hand_computed():
    q, k = E([[1.0, 0.0]]), E([[1.0, 0.0]])
    queue = E([[0.0, 1.0], [-1.0, 0.0]])
    # logits [1, 0, -1] / 0.5 = [2, 0, -2], target 0
    want = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-2)))
    assert image_infonce_loss(q, k, queue, 0.5).item() == pytest.approx(want, rel=1e-6)


def test_infonce_limits():
    q = F.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    # perfect alignment, every negative opposite, small temperature -> 0
    assert image_infonce_loss(q, q, -q, 0.01).item() < 1e-6
    # uniform: positive and K negatives all equal -> log(K + 1)
    same = q[:1].repeat(3, 1)
    assert image_infonce_loss(same, same, q[:1].repeat(7, 1), 0.2).item() == pytest.approx(math.log(8), rel=1e-6)
    # target is index 0 for every row (not arange(N)): swapping rows of k changes nothing per row
    assert image_infonce_loss(q, q, -q, 0.2).item() == pytest.approx(
        image_infonce_loss(q[[2, 1, 0]], q[[2, 1, 0]], -q, 0.2).item(), rel=1e-6)


# ---------------------------------------------------------------- point region contrast
def _four_points():
    return E([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]), E([0, 0, 1, 1])


def test_point_loss_hand_computed():
    f, labels = _four_points()
    # anchor 0: positive sim 1, negatives 0, 0 (self excluded) -> -(1 - log(e + 2)) for every anchor
    assert point_region_contrast_loss(f, labels, 1.0, 1.0).item() == pytest.approx(math.log(math.e + 2) - 1, rel=1e-6)
    # t = 0.5, base 0.25: logits doubled, loss scaled by t / base = 2
    want = 2 * (math.log(math.exp(2) + 2) - 2)
    assert point_region_contrast_loss(f, labels, 0.5, 0.25).item() == pytest.approx(want, rel=1e-6)


def test_point_loss_limits_and_ignored_points():
    f, labels = _four_points()
    uniform = f[:1].repeat(4, 1)
    # uniform features: every log-probability is -log(3)
    assert point_region_contrast_loss(uniform, labels, 0.2, 0.07).item() == pytest.approx(0.2 / 0.07 * math.log(3))
    # perfect alignment (orthogonal regions, tiny temperature) -> 0
    assert point_region_contrast_loss(f, labels, 0.01, 0.07).item() < 1e-6
    # label -1 is ignored entirely; an anchor without positive is not an anchor
    extra = torch.cat([f, E([[0.6, 0.8], [0.8, -0.6]])])
    base = point_region_contrast_loss(f, labels, 0.3, 0.07)
    assert point_region_contrast_loss(extra, torch.cat([labels, E([-1, -1])]), 0.3, 0.07).item() == pytest.approx(
        base.item(), rel=1e-6)
    lonely = point_region_contrast_loss(extra[:5], torch.cat([labels, E([7])]), 0.3, 0.07)
    assert lonely.item() != pytest.approx(base.item())  # the lonely point is a negative of the others


def test_point_loss_empty_selection_keeps_graph():
    f = F.normalize(torch.randn(4, 3), dim=1).requires_grad_()
    loss = point_region_contrast_loss(f, E([-1, -1, -1, -1]), 0.2, 0.07)
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()
    assert torch.equal(f.grad, torch.zeros_like(f))


# ---------------------------------------------------------------- affinity distillation
def test_distillation_hand_computed():
    # uniform student vs any teacher: cross-entropy = log(L)
    assert affinity_distillation_loss(E([[0.0, 0.0]]), E([[1.0, 0.0]]), E([[0.0, 0.0]]), 1.0, 1.0).item() == \
        pytest.approx(math.log(2))
    # student [1, 0], teacher softmax([0, 1]) -> -(e^0/(1+e) * (1 - log(1+e)) + e/(1+e) * (0 - log(1+e)))
    t0, t1 = 1 / (1 + math.e), math.e / (1 + math.e)
    want = -(t0 * (1 - math.log(1 + math.e)) + t1 * (0 - math.log(1 + math.e)))
    got = affinity_distillation_loss(E([[1.0, 0.0]]), E([[0.0, 1.0]]), E([[0.0, 0.0]]), 1.0, 1.0)
    assert got.item() == pytest.approx(want, rel=1e-6)
    # the centre is subtracted from the teacher: teacher == centre -> uniform target
    got = affinity_distillation_loss(E([[1.0, 0.0]]), E([[3.0, 1.0]]), E([[3.0, 1.0]]), 1.0, 1.0)
    assert got.item() == pytest.approx(-0.5 * (1 - math.log(1 + math.e)) + 0.5 * math.log(1 + math.e), rel=1e-6)


def test_distillation_limits():
    s = torch.randn(5, 6, requires_grad=True)
    # sharp teacher equal to a sharp student -> 0
    assert affinity_distillation_loss(s * 0 + E([10.0, 0, 0, 0, 0, 0]), E([[10.0, 0, 0, 0, 0, 0]]).repeat(5, 1),
                                      torch.zeros(1, 6), 0.01, 0.01).item() < 1e-6
    empty = affinity_distillation_loss(s[:0], s[:0].detach(), torch.zeros(1, 6), 0.1, 0.04)
    assert empty.item() == 0 and empty.requires_grad


# ---------------------------------------------------------------- matching and taps
def _brute_force_match(a, b, m, radius):
    ca, cb = cell_centres_wrt_image(a[None], m)[0], cell_centres_wrt_image(b[None], m)[0]
    diag = lambda box: math.hypot(abs(box[2] - box[0]) / m, abs(box[3] - box[1]) / m)  # noqa: E731
    thresh = radius * max(diag(a.tolist()), diag(b.tolist()))
    close = torch.cdist(ca, cb) < thresh
    return close.nonzero(as_tuple=True)


def test_match_cells_hand_cases():
    box = E([0.1, 0.2, 0.6, 0.7])
    ia, ib = match_cells(box, box, 4, 0.5)
    assert torch.equal(ia, torch.arange(16)) and torch.equal(ib, torch.arange(16))
    ia, ib = match_cells(box, box[[2, 1, 0, 3]], 4, 0.5)  # same crop, flipped: columns mirror
    assert torch.equal(ib, (ia // 4) * 4 + 3 - ia % 4)
    ia, ib = match_cells(box, E([0.7, 0.7, 0.9, 0.9]), 4, 0.5)
    assert ia.numel() == 0


def test_tile_order_hand_case():
    # M = 4, 2 x 2 tiles: blocks row-major, cells row-major inside a block; image 1 after image 0
    cells = torch.arange(32)
    want = torch.tensor([0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15])
    assert torch.equal(cells[tile_order(cells, 4, 2)], torch.cat([want, want + 16]))
    # stable: repeated cells (pairs grouped by cell) stay grouped and in order; M not a multiple of the tile
    cells = torch.tensor([2, 2, 3, 5, 5, 5, 10])
    order = tile_order(cells, 3, 2)  # 3 x 3 grid: 2 -> block (0, 1); 3 -> (0, 0); 5 -> (0, 1); 10 -> image 1
    assert order.tolist() == [2, 0, 1, 3, 4, 5, 6]


def test_match_cells_equals_brute_force_batched():
    gen = torch.Generator().manual_seed(3)
    lo = torch.rand(6, 2, generator=gen) * 0.5
    a = torch.cat([lo, lo + 0.2 + torch.rand(6, 2, generator=gen) * 0.3], 1)
    b = a + (torch.rand(6, 4, generator=gen) - 0.5) * 0.2
    b[::2] = b[::2][:, [2, 1, 0, 3]]  # flips
    b[1] = torch.tensor([0.3, 0.3, 0.4, 0.35])  # a view much smaller than its partner: wide bands of matches
    a[3] = torch.tensor([0.31, 0.3, 0.38, 0.36])
    m, r = 7, 0.5
    ia, ib = match_cells(a, b, m, r)
    key = ia * 6 * m * m + ib
    assert torch.all(key[1:] > key[:-1])  # sorted by (image, idx_a, idx_b), no duplicates
    pairs = set(zip(ia.tolist(), ib.tolist()))
    want = set()
    for i in range(6):
        x, y = _brute_force_match(a[i], b[i], m, r)
        want |= {(i * m * m + p, i * m * m + q) for p, q in zip(x.tolist(), y.tolist())}
    assert pairs == want and len(want) > 0


def test_cell_taps_equal_interpolate_and_points():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, 4, generator=gen)
    m = 6
    up = F.interpolate(x, size=(m, m), mode="bilinear", align_corners=False).flatten(2)  # (2, 5, 36)
    cells = torch.tensor([0, 7, 35, 36 + 4, 36 + 30])
    rows, w = cell_taps(cells, m, (3, 4))
    flat = x.permute(0, 2, 3, 1).reshape(-1, 5)
    got = (flat[rows] * w[..., None]).sum(1)
    want = up.permute(0, 2, 1).reshape(-1, 5)[cells]
    assert torch.allclose(got, want, atol=1e-6)
    # a point at a pixel centre reads exactly that pixel; labels follow (image, region) with -1 for invalid
    img = torch.randn(1, 2, 4, 4, generator=gen)
    pts = E([[[[0.125, 0.375], [0.875, 0.625]]]])  # (x, y): pixels (row 1, col 0) and (row 2, col 3)
    assert torch.allclose(sample_points(img, pts), torch.stack([img[0, :, 1, 0], img[0, :, 2, 3]]), atol=1e-6)
    assert point_labels(E([[True, False], [True, True]]), 2).tolist() == [0, 0, -1, -1, 2, 2, 3, 3]


# ---------------------------------------------------------------- efficient distillation == naive
def _naive(u_q, u_k, u_d, w_q, w_k, iq, id_, m, center, temps):
    """Materialises the upsampled maps and the full (N, M^2, M^2) affinities (tiny sizes only)."""
    up = lambda x: F.interpolate(x, size=(m, m), mode="bilinear", align_corners=False).flatten(2)  # noqa: E731
    uq, uk, ud = up(u_q), up(u_k), up(u_d)  # (N, C, M^2)
    lq = up(torch.einsum("nchw,lc->nlhw", u_q, w_q))
    ld = up(torch.einsum("nchw,lc->nlhw", u_d, w_k))
    aff_q = torch.einsum("nci,ncj->nij", uq, uk) / 128.0  # (N, M^2, M^2)
    aff_d = torch.einsum("nci,ncj->nij", ud, uk) / 128.0
    m2 = m * m
    s = torch.cat([aff_q[iq // m2, iq % m2], lq.permute(0, 2, 1)[iq // m2, iq % m2]], 1)
    t = torch.cat([aff_d[id_ // m2, id_ % m2], ld.permute(0, 2, 1)[id_ // m2, id_ % m2]], 1)
    return affinity_distillation_loss(s, t, center, *temps), t.sum(0, keepdim=True)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


# (device, kernel): PyTorch ops on both devices; the compiled CPU kernel (native.py) on the CPU
IMPLS = [("cpu", "torch"), ("cpu", "compiled"), pytest.param("cuda", "torch", marks=CUDA)]


@pytest.mark.parametrize("device,kernel", IMPLS)
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("chunk", [0, 5])
@pytest.mark.parametrize("dedupe", [False, True])  # teacher cell ids given: one row per distinct V_d cell
def test_matched_distillation_equals_naive(chunk, dense, device, kernel, dedupe):
    gen = torch.Generator().manual_seed(1)
    n, c, h, w, m, nl = 2, 8, 2, 4, 5, 6
    unit = lambda: F.normalize(torch.randn(n, c, h, w, generator=gen), dim=1)  # noqa: E731
    u_q, u_k, u_d = unit().requires_grad_(), unit(), unit()
    w_q, w_k = torch.randn(nl, c, generator=gen).requires_grad_(), torch.randn(nl, c, generator=gen)
    boxes_q = E([[0.1, 0.1, 0.7, 0.8], [0.9, 0.2, 0.3, 0.9]])
    boxes_d = E([[0.2, 0.0, 0.8, 0.6], [0.2, 0.3, 0.8, 0.8]])
    iq, id_ = match_cells(boxes_q, boxes_d, m, 0.5)
    assert iq.numel() > 10
    center = torch.randn(1, m * m + nl, generator=gen) * 0.1
    temps = (0.1, 0.05)
    want, want_sum = _naive(u_q, u_k, u_d, w_q, w_k, iq, id_, m, center, temps)
    g_want = torch.autograd.grad(want, [u_q, w_q])

    dev = [t.to(device) for t in (u_q, u_k, u_d, w_q, w_k, iq, id_, center)]
    student = CellTables(cell_table(dev[0], dev[1], dev[3], m, 128.0), *cell_taps(dev[5], m, (h, w)),
                         image=iq // (m * m), rows_per_image=h * w)
    teacher = CellTables(cell_table(dev[2], dev[1], dev[4], m, 128.0), *cell_taps(dev[6], m, (h, w)),
                         cells=id_ if dedupe else None)
    got = matched_distillation_loss(student, teacher, dev[7], *temps, chunk_size=chunk, dense=dense, kernel=kernel)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    for a, b in zip(torch.autograd.grad(got, [u_q, w_q]), g_want):
        assert torch.allclose(a.cpu(), b, atol=1e-6, rtol=1e-4)
    assert torch.allclose(matched_teacher_sum(teacher).cpu(), want_sum, atol=1e-5)


def test_dense_distillation_needs_images():
    t = CellTables(torch.zeros(4, 3), torch.zeros(1, 4, dtype=torch.long), torch.full((1, 4), 0.25))
    with pytest.raises(ValueError, match="image"):
        matched_distillation_loss(t, t, torch.zeros(1, 3), 0.1, 0.07, 0, dense=True)


def test_distillation_rejects_taps_not_summing_to_one():
    # the centre is folded into the teacher table, which is exact only for taps that sum to 1 (bilinear)
    t = CellTables(torch.zeros(4, 3), torch.zeros(1, 4, dtype=torch.long), torch.full((1, 4), 0.3))
    with pytest.raises(ValueError, match="sum to 1"):
        matched_distillation_loss(t, t, torch.zeros(1, 3), 0.1, 0.07, 0)


@pytest.mark.parametrize("device,kernel", IMPLS)
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("temps", [(0.1, 0.07), (1.0, 1.0), (0.004, 0.004)])  # exp with / without row-max shifts
@pytest.mark.parametrize("dedupe", [False, True])
def test_matched_distillation_per_distinct_student_cell_equals_naive(dense, device, kernel, temps, dedupe):
    """The model's path: student rows once per distinct V_q cell with pair counts, several chunks."""
    gen = torch.Generator().manual_seed(4)
    n, c, h, w, m, nl = 2, 8, 3, 2, 6, 5
    unit = lambda: F.normalize(torch.randn(n, c, h, w, generator=gen), dim=1)  # noqa: E731
    u_q, u_k, u_d = unit().requires_grad_(), unit(), unit()
    w_q, w_k = torch.randn(nl, c, generator=gen).requires_grad_(), torch.randn(nl, c, generator=gen)
    # image 0: V_q twice as large as V_d (several small V_d cells per V_q cell); image 1 the other way round
    iq, id_ = match_cells(E([[0.1, 0.1, 0.7, 0.7], [0.5, 0.2, 0.2, 0.5]]),
                          E([[0.3, 0.3, 0.6, 0.6], [0.7, 0.0, 0.1, 0.6]]), m, 0.5)
    cells, counts = torch.unique_consecutive(iq, return_counts=True)
    assert counts.max() > 1
    center = torch.randn(1, m * m + nl, generator=gen) * 0.1
    want, want_sum = _naive(u_q, u_k, u_d, w_q, w_k, iq, id_, m, center, temps)
    g_want = torch.autograd.grad(want, [u_q, w_q])

    dev = [t.to(device) for t in (u_q, u_k, u_d, w_q, w_k, cells, id_, center)]
    student = CellTables(cell_table(dev[0], dev[1], dev[3], m, 128.0), *cell_taps(dev[5], m, (h, w)), counts,
                         image=cells // (m * m), rows_per_image=h * w)
    teacher = CellTables(cell_table(dev[2], dev[1], dev[4], m, 128.0), *cell_taps(dev[6], m, (h, w)),
                         cells=id_ if dedupe else None)
    assert id_.unique().numel() < id_.numel()  # several V_q cells share V_d cells: deduplication has work
    got = matched_distillation_loss(student, teacher, dev[7], *temps, chunk_size=4, dense=dense, kernel=kernel)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    for a, b in zip(torch.autograd.grad(got, [u_q, w_q]), g_want):
        assert torch.allclose(a.cpu(), b, atol=1e-6, rtol=1e-4)
    assert torch.allclose(matched_teacher_sum(teacher).cpu(), want_sum, atol=1e-5)
