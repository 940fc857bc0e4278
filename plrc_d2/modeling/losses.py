"""PLRC losses: pure functions of tensors, returning 0-d float32 tensors (computed in float32 under AMP).

Shorthand: N images, D embedding dim, K queue length, n points / matched pairs, L distillation logits
(M*M affinities + DISTILL_NUM_LOGITS), M distillation map size, h x w feature map.

`affinity_distillation_loss` is the definition on explicit (n, L) logits. `matched_distillation_loss`
computes the same value for matched cells straight from the h x w maps: bilinear upsampling is linear,
so a cell's upsampled embedding, its affinities to every upsampled anchor cell and its logits are
4-tap combinations of rows of a per-feature-cell table (N*h*w, M*M + logits) (`cell_table`). Nothing of
size N x M^2 x M^2 or N x logits x M^2 is ever built; (cells, L) rows exist one chunk at a time, the
student rows once per distinct V_q cell (not per pair), and the gradient is formed in the same pass
(cross-entropy against a fixed target has the closed-form gradient softmax(s/t_s) - p_t), so backward
costs one scaled copy of the table.
"""
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch.nn import functional as F

from .distributed import host_to_device

__all__ = [
    "image_infonce_loss",
    "point_region_contrast_loss",
    "affinity_distillation_loss",
    "CellTables",
    "cell_table",
    "upsample_matrix",
    "gather_cell_logits",
    "matched_distillation_loss",
    "matched_teacher_sum",
]

_MASKED = -1e9  # logit of excluded entries: exp() underflows to 0 but stays finite (no NaN gradients)


def _fp32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype != torch.float32 else x


def image_infonce_loss(q, k, queue, temperature: float) -> torch.Tensor:
    """MoCo v2 InfoNCE. q, k (N, D) L2-normalised query/key embeddings, queue (K, D) negatives.

    logits = [q.k, q.queue^T] / temperature, (N, 1 + K); cross-entropy with target index 0.
    """
    q, k, queue = _fp32(q), _fp32(k).detach(), _fp32(queue).detach()
    with torch.autocast(q.device.type, enabled=False):
        pos = (q * k).sum(dim=1, keepdim=True)
        logits = torch.cat([pos, q @ queue.t()], dim=1) / temperature
        target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        if q.shape[0] == 0:
            return q.sum() * 0
        return F.cross_entropy(logits, target)


def point_region_contrast_loss(features, labels, temperature: float, base_temperature: float) -> torch.Tensor:
    """Supervised-contrastive loss over points (SupCon, contrast mode "all").

    Args:
        features: (n, D) L2-normalised point embeddings of both views.
        labels: (n,) int (image, region) ids; points with the same label are positives of each other
            (never of themselves); label < 0 marks a point to ignore (neither anchor nor contrast).
    Returns:
        mean over anchors with >= 1 positive of
        -(temperature / base_temperature) * mean_{p in P(i)} log(exp(z_i.z_p/t) / sum_{a != i} exp(z_i.z_a/t)).
        No anchor -> features.sum() * 0 (a zero that keeps the graph).
    """
    f = _fp32(features)
    with torch.autocast(f.device.type, enabled=False):
        n = f.shape[0]
        valid = labels >= 0
        not_self = ~torch.eye(n, dtype=torch.bool, device=f.device)
        contrast = not_self & valid[None, :] & valid[:, None]
        positive = contrast & (labels[:, None] == labels[None, :])
        sim = (f @ f.t()) / temperature
        log_z = torch.logsumexp(sim.masked_fill(~contrast, _MASKED), dim=1, keepdim=True)
        log_prob = torch.where(positive, sim - log_z, torch.zeros_like(sim))
        num_pos = positive.sum(1)
        mean_log_prob = log_prob.sum(1) / num_pos.clamp_min(1)
        anchor = num_pos > 0
        per_anchor = -(temperature / base_temperature) * mean_log_prob
        total = torch.where(anchor, per_anchor, torch.zeros_like(per_anchor)).sum()
        return total / anchor.sum().clamp_min(1) + f.sum() * 0


def affinity_distillation_loss(student, teacher, center, student_temperature: float,
                               teacher_temperature: float) -> torch.Tensor:
    """Point affinity distillation (DINO-style cross-entropy with a centred, sharpened teacher).

    student, teacher: (n, L) logits of matched point pairs; center (1, L).
    Returns mean over pairs of -sum softmax((teacher - center) / t_t) * log_softmax(student / t_s); the
    teacher is detached. n == 0 -> student.sum() * 0.
    """
    s = _fp32(student)
    with torch.autocast(s.device.type, enabled=False):
        if s.shape[0] == 0:
            return s.sum() * 0
        t = F.softmax((_fp32(teacher).detach() - _fp32(center)) / teacher_temperature, dim=-1)
        return -(t * F.log_softmax(s / student_temperature, dim=-1)).sum(dim=-1).mean()


def upsample_matrix(feat_hw: Tuple[int, int], map_size: int, device=None) -> torch.Tensor:
    """(M*M, h*w) float32 matrix of bilinear upsampling (align_corners=False) from h x w to M x M."""
    mats = []
    for n in feat_hw:
        eye = torch.eye(n, dtype=torch.float64, device=device).unsqueeze(1)
        mats.append(F.interpolate(eye, size=map_size, mode="linear", align_corners=False)[:, 0, :].t())
    return torch.kron(mats[0], mats[1]).float()


def cell_table(u_view: torch.Tensor, u_anchor: torch.Tensor, weight: torch.Tensor, map_size: int,
               affinity_divisor: float) -> torch.Tensor:
    """Per-feature-cell rows of the distillation logits.

    u_view, u_anchor: (N, d_u, h, w) distillation embeddings of a view and of the anchor view V_k (same
    images); weight: (L', d_u) unit-row weight of the logits layer. Returns (N*h*w, M*M + L') float32:
    row b*h*w + c = [u_view(c) . up(u_anchor)(a) / divisor for the M*M upsampled anchor cells a of image b]
    ++ u_view(c) @ weight^T. Differentiable (autograd) w.r.t. all inputs.
    """
    n, _, h, w = u_view.shape
    up = upsample_matrix((h, w), map_size, u_view.device)
    cells = u_view.flatten(2).transpose(1, 2)  # (N, hw, d_u)
    anchors_up = u_anchor.flatten(2) @ up.t()  # (N, d_u, M*M): only N x d_u x M^2
    aff = torch.bmm(cells, anchors_up) / affinity_divisor  # (N, hw, M*M)
    return torch.cat([aff, cells @ weight.t()], dim=2).reshape(n * h * w, -1)


@dataclass
class CellTables:
    """One side (student V_q or teacher V_d) of the distillation.

    table: (N*h*w, M*M + logits) float32 from `cell_table`.
    rows, weights: (n, 4) bilinear taps (`matching.cell_taps`) of the M x M cells of this side.
    counts: student only, optional host (CPU) int64 (n,): row i stands for counts[i] consecutive matched
        pairs (pairs sorted by student cell); None = one pair per row.
    """

    table: torch.Tensor
    rows: torch.Tensor
    weights: torch.Tensor
    counts: Optional[torch.Tensor] = None


def gather_cell_logits(t: CellTables) -> torch.Tensor:
    """-> (n, M*M + logits): the rows of the naive upsample-then-dot computation at the cells."""
    return F.embedding_bag(t.rows, t.table, per_sample_weights=t.weights.to(t.table.dtype), mode="sum")


def _chunks(counts: torch.Tensor, pairs_per_chunk: int) -> List[Tuple[int, int, int, int]]:
    """Host counts (cells,) -> [(cell0, cell1, pair0, pair1)] with about pairs_per_chunk pairs each."""
    ends = counts.cumsum(0).tolist()
    out, c0, p0 = [], 0, 0
    for c, end in enumerate(ends):
        if end - p0 >= pairs_per_chunk or c == len(ends) - 1:
            out.append((c0, c + 1, p0, end))
            c0, p0 = c + 1, end
    return out


def _tap_matrix(cells: CellTables, num_rows: int) -> torch.Tensor:
    """Sparse (table rows, cells) matrix of the taps: its product with a (cells, L) gradient is the adjoint
    of `gather_cell_logits` (an order of magnitude faster than index_add_ on the CPU)."""
    c, taps = cells.rows.shape
    cols = torch.arange(c, device=cells.rows.device).repeat_interleave(taps)
    return torch.sparse_coo_tensor(torch.stack([cells.rows.reshape(-1), cols]), cells.weights.reshape(-1),
                                   (num_rows, c), check_invariants=False).coalesce()


def _teacher_targets(t_table, teacher: CellTables, p0: int, p1: int, counts) -> torch.Tensor:
    """Sum, per student cell, of the teacher distributions softmax((t - c) / t_t) of its pairs [p0, p1).

    t_table: teacher table / t_t with the row -c / t_t last; counts: (cells,) pairs per cell (device)."""
    pairs = p1 - p0
    bias = torch.full((pairs, 1), t_table.shape[0] - 1, dtype=torch.long, device=t_table.device)
    rows = torch.cat([teacher.rows[p0:p1], bias], 1)
    weights = torch.cat([teacher.weights[p0:p1], torch.ones_like(bias, dtype=teacher.weights.dtype)], 1)
    x = gather_cell_logits(CellTables(t_table, rows, weights))  # (pairs, L)
    x = x.sub_(x.amax(dim=1, keepdim=True)).exp_()
    owner = torch.repeat_interleave(torch.arange(counts.shape[0], device=x.device), counts.long(), output_size=pairs)
    norm = torch.sparse_coo_tensor(torch.stack([owner, torch.arange(pairs, device=x.device)]), 1.0 / x.sum(dim=1),
                                   (counts.shape[0], pairs), check_invariants=False)
    return torch.sparse.mm(norm, x)


class _FusedDistillation(torch.autograd.Function):
    """Loss and its gradient w.r.t. the student table in one chunked pass (see module docstring)."""

    @staticmethod
    def forward(ctx, student_table, teacher_table, center, student, teacher, temps, pairs_per_chunk):
        with torch.autocast(student_table.device.type, enabled=False):
            return _FusedDistillation._run(ctx, student_table, teacher_table, center, student, teacher, temps,
                                           pairs_per_chunk)

    @staticmethod
    def _run(ctx, student_table, teacher_table, center, student, teacher, temps, pairs_per_chunk):
        s_temp, t_temp = temps
        counts = student.counts if student.counts is not None else torch.ones(student.rows.shape[0], dtype=torch.long)
        n = int(counts.sum())
        dev_counts = host_to_device(counts, student_table.device).to(student_table.dtype)
        # Temperatures folded into the (small) tables; the teacher table gets a last row -c / t_t that every
        # pair taps with weight 1, so one gather yields (t - c) / t_t.
        t_table = torch.cat([teacher_table, -center.reshape(1, -1)]) / t_temp
        s_table = student_table / s_temp
        grad = torch.zeros_like(student_table) if ctx.needs_input_grad[0] else None
        total = student_table.new_zeros(())
        # The (cells, L) rows are updated in place: on a CPU this loop is bound by memory traffic and by fresh
        # allocations (page faults), not arithmetic. A variant with torch.softmax per chunk and teacher rows
        # once per distinct V_d cell measured ~9% slower on a 2-core CPU (R-50 sizes), for that reason.
        for c0, c1, p0, p1 in _chunks(counts, max(pairs_per_chunk, 1)):
            target = _teacher_targets(t_table, teacher, p0, p1, dev_counts[c0:c1])  # (cells, L) sum of p_t
            st = CellTables(s_table, student.rows[c0:c1], student.weights[c0:c1])
            z = gather_cell_logits(st)  # (cells, L) student logits / t_s
            cross = target.reshape(-1) @ z.reshape(-1)
            z_max = z.amax(dim=1, keepdim=True)
            e = z.sub_(z_max).exp_()  # in place: exp(z - max)
            e_sum = e.sum(dim=1)
            k = dev_counts[c0:c1]
            total = total + (k * (z_max[:, 0] + e_sum.log())).sum() - cross
            if grad is not None:  # d/ds of the chunk's sum: (k softmax(z) - target) / t_s, in place
                g = e.mul_((k / e_sum)[:, None]).sub_(target).div_(s_temp)
                grad += torch.sparse.mm(_tap_matrix(st, grad.shape[0]), g)
        if grad is not None:
            ctx.save_for_backward(grad / max(n, 1))
        return total / max(n, 1)

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * grad_output, None, None, None, None, None, None


def matched_distillation_loss(student: CellTables, teacher: CellTables, center, student_temperature: float,
                              teacher_temperature: float, chunk_size: int) -> torch.Tensor:
    """`affinity_distillation_loss` of the n matched pairs, from the cell tables (float32).

    teacher rows are per pair; student rows per pair or per distinct cell with `counts`. Pairs are
    processed about `chunk_size` at a time (0: all at once), so peak memory holds one chunk's (chunk, L)
    rows. Gradients reach student.table only (the teacher and centre are constants).
    """
    if student.rows.shape[0] == 0:
        return student.table.sum() * 0
    chunk = teacher.rows.shape[0] if chunk_size <= 0 else chunk_size
    return _FusedDistillation.apply(student.table, teacher.table.detach(), center.detach().float(), student, teacher,
                                    (student_temperature, teacher_temperature), chunk)


@torch.no_grad()
def matched_teacher_sum(teacher: CellTables) -> torch.Tensor:
    """(1, M*M + logits) sum over the matched pairs of the teacher rows, without building them."""
    return gather_cell_logits(CellTables(teacher.table, teacher.rows.reshape(1, -1), teacher.weights.reshape(1, -1)))
