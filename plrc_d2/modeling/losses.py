"""PLRC losses: pure functions of tensors, returning 0-d float32 tensors (computed in float32 under AMP).

Shorthand: N images, D embedding dim, K queue length, n points / matched pairs, L distillation logits
(M*M affinities + DISTILL_NUM_LOGITS), M distillation map size, h x w feature map.

`affinity_distillation_loss` is the definition on explicit (n, L) logits. `matched_distillation_loss`
computes the same value for matched cells straight from the h x w maps: bilinear upsampling is linear,
so a cell's upsampled embedding, its affinities to every upsampled anchor cell and its logits are
4-tap combinations of per-feature-cell tables of size (N*h*w, h*w + logits). Nothing of size
N x M^2 x M^2 or N x logits x M^2 is ever built; the (pairs, L) rows exist one chunk at a time.
"""
from dataclasses import dataclass
from typing import Tuple

import torch
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

__all__ = [
    "image_infonce_loss",
    "point_region_contrast_loss",
    "affinity_distillation_loss",
    "CellTables",
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


@dataclass
class CellTables:
    """Per-feature-cell tables of one side (student V_q or teacher V_d) of the distillation.

    table: (N*h*w, h*w + logits) float32; row b*h*w + c holds [u(c) . u_anchor(c') for the h*w anchor
        cells c' of image b] ++ logits(c), u the view's L2-normalised distillation embedding.
    rows, weights: (n, 4) bilinear taps (`matching.cell_taps`) of the matched M x M cells on this view.
    feat_hw: (h, w); map_size: M; affinity_divisor: affinities are divided by it (reference 128).
    """

    table: torch.Tensor
    rows: torch.Tensor
    weights: torch.Tensor
    feat_hw: Tuple[int, int]
    map_size: int
    affinity_divisor: float

    def chunk(self, start: int, stop: int) -> "CellTables":
        return CellTables(self.table, self.rows[start:stop], self.weights[start:stop], self.feat_hw,
                          self.map_size, self.affinity_divisor)


def gather_cell_logits(t: CellTables) -> torch.Tensor:
    """-> (n, M*M + logits): [affinity of each matched cell to all M*M upsampled anchor cells / divisor]
    ++ [upsampled logits], i.e. the rows of the naive upsample-then-dot computation."""
    h, w = t.feat_hw
    hw = h * w
    mixed = F.embedding_bag(t.rows, t.table, per_sample_weights=t.weights.to(t.table.dtype), mode="sum")
    aff = mixed[:, :hw].reshape(-1, 1, h, w)
    aff = F.interpolate(aff, size=(t.map_size, t.map_size), mode="bilinear", align_corners=False)
    return torch.cat([aff.flatten(1) / t.affinity_divisor, mixed[:, hw:]], dim=1)


def _chunk_loss_sum(student_table, teacher_table, s_rows, s_weights, t_rows, t_weights, center, meta):
    student, teacher, temps = meta
    s = gather_cell_logits(CellTables(student_table, s_rows, s_weights, *student))
    with torch.no_grad():
        t = gather_cell_logits(CellTables(teacher_table, t_rows, t_weights, *teacher))
    return affinity_distillation_loss(s, t, center, *temps) * s.shape[0]


def matched_distillation_loss(student: CellTables, teacher: CellTables, center, student_temperature: float,
                              teacher_temperature: float, chunk_size: int) -> torch.Tensor:
    """`affinity_distillation_loss` of the n matched pairs, from the h x w tables.

    Pairs are processed `chunk_size` at a time (0: all at once); with more than one chunk each chunk is
    recomputed in backward (activation checkpointing), so peak memory holds one chunk's (chunk, L) rows.
    """
    n = student.rows.shape[0]
    if n == 0:
        return student.table.sum() * 0
    chunk = n if chunk_size <= 0 else chunk_size
    meta = (
        (student.feat_hw, student.map_size, student.affinity_divisor),
        (teacher.feat_hw, teacher.map_size, teacher.affinity_divisor),
        (student_temperature, teacher_temperature),
    )
    teacher_table = teacher.table.detach()
    total = student.table.sum() * 0
    for start in range(0, n, chunk):
        sl = slice(start, min(start + chunk, n))
        args = (student.table, teacher_table, student.rows[sl], student.weights[sl], teacher.rows[sl],
                teacher.weights[sl], center, meta)
        if chunk < n and torch.is_grad_enabled():
            total = total + checkpoint(_chunk_loss_sum, *args, use_reentrant=False)
        else:
            total = total + _chunk_loss_sum(*args)
    return total / n


@torch.no_grad()
def matched_teacher_sum(teacher: CellTables) -> torch.Tensor:
    """(1, M*M + logits) sum over the matched pairs of the teacher rows, without building them
    (a single bag over all taps, then the linear upsampling of the affinity part)."""
    one_bag = CellTables(teacher.table, teacher.rows.reshape(1, -1), teacher.weights.reshape(1, -1),
                         teacher.feat_hw, teacher.map_size, teacher.affinity_divisor)
    return gather_cell_logits(one_bag)
