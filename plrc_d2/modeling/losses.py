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
import math
import warnings
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch.nn import functional as F

from .distributed import host_to_device
from .native import load_distill_kernel, run_distill_kernel

__all__ = [
    "image_infonce_loss",
    "point_region_contrast_loss",
    "affinity_distillation_loss",
    "CellTables",
    "cell_table",
    "upsample_matrix",
    "matched_distillation_loss",
    "matched_teacher_sum",
    "DISTILL_KERNELS",
]

# The CSR tap matrices are built here by construction, valid (invariant checks are opted out of explicitly); torch's
# one-time notice that sparse CSR is a beta feature would only clutter every training log.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

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
    # (cells . anchors) @ up^T rather than cells . (anchors @ up^T): the same product, ~10x fewer FLOPs (h*w x h*w
    # affinities first, upsampled after, instead of d_u-long dot products with every upsampled anchor).
    aff = (torch.bmm(cells, u_anchor.flatten(2)) / affinity_divisor) @ up.t()  # (N, hw, M*M)
    return torch.cat([aff, cells @ weight.t()], dim=2).reshape(n * h * w, -1)


@dataclass
class CellTables:
    """One side (student V_q or teacher V_d) of the distillation.

    table: (N*h*w, M*M + logits) float32 from `cell_table`.
    rows, weights: (n, 4) bilinear taps (`matching.cell_taps`) of the M x M cells of this side; every row of
        weights sums to 1 (the distillation folds the centre into the teacher table on that basis).
    counts: student only, optional host (CPU) int64 (n,): row i stands for counts[i] consecutive matched
        pairs (pairs sorted by student cell); None = one pair per row.
    image, rows_per_image: student only, optional: host int64 (n,) image of each row (non-decreasing) and the
        table rows per image (h*w). With them the distillation can work image by image with dense products
        (`matched_distillation_loss(dense=...)`).
    cells: teacher only, optional: host int64 (n,) ids such that rows with equal ids are equal (the V_d cell of
        each pair). The sparse (CPU) path then computes each distinct teacher distribution once per chunk.
    """

    table: torch.Tensor
    rows: torch.Tensor
    weights: torch.Tensor
    counts: Optional[torch.Tensor] = None
    image: Optional[torch.Tensor] = None
    rows_per_image: int = 0
    cells: Optional[torch.Tensor] = None


def _chunks(counts: torch.Tensor, pairs_per_chunk: int,
            image: Optional[torch.Tensor] = None) -> List[Tuple[int, int, int, int]]:
    """Host counts (cells,) -> [(cell0, cell1, pair0, pair1)]: a new chunk starts where the pair offset crosses a
    multiple of pairs_per_chunk and, if `image` (host (cells,)) is given, wherever the image changes."""
    ends = counts.cumsum(0)
    starts = ends - counts
    new = torch.ones(counts.shape[0], dtype=torch.bool)
    new[1:] = starts[1:] // pairs_per_chunk != starts[:-1] // pairs_per_chunk
    if image is not None:
        new[1:] |= image[1:] != image[:-1]
    first = new.nonzero()[:, 0]
    last = torch.cat([first[1:], first.new_full((1,), counts.shape[0])])
    return list(zip(first.tolist(), last.tolist(), starts[first].tolist(), ends[last - 1].tolist()))


def _gather_matrix(rows: torch.Tensor, weights: torch.Tensor, num_cols: int) -> torch.Tensor:
    """Sparse CSR (len(rows), num_cols) matrix with row i = sum_j weights[i, j] e_{rows[i, j]} (rows, weights:
    (cells, taps)): its product with a table gives the cells' rows (tap-weighted sums of table rows), written into
    a reusable buffer by `torch.addmm(out=)` (a fresh chunk-sized output costs page faults on every chunk on a CPU)."""
    c, taps = rows.shape
    crow = torch.arange(0, c * taps + 1, taps, device=rows.device)
    return torch.sparse_csr_tensor(crow, rows.reshape(-1), weights.reshape(-1).to(torch.float32), (c, num_cols),
                                   check_invariants=False)


def _scatter_matrix(rows: torch.Tensor, weights: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Sparse COO (num_rows, cells) adjoint of `_gather_matrix`. COO, not CSR: its rows (table rows) are long
    and few, which CSR kernels parallelise badly (measured ~2x slower on a CPU)."""
    c, taps = rows.shape
    cols = torch.arange(c, device=rows.device).repeat_interleave(taps)
    return torch.sparse_coo_tensor(torch.stack([rows.reshape(-1), cols]), weights.reshape(-1), (num_rows, c),
                                   check_invariants=False).coalesce()


# The fused pass works in base 2: the tables are pre-scaled by log2(e) (free: they are small), so every block
# element costs one exp2, which is ~1.7x cheaper than exp on a CPU (measured, AVX2) and gives the same softmax.
_LOG2E = 1.0 / math.log(2.0)
# exp2() without the row-max shift stays finite and normal in float32 while |logit| <= this bound (2^86 * 10^5
# logits < 1e32; 2^-86 > 1e-26).
_EXP2_SAFE_BOUND = 86.0


def _logit_bound(table: torch.Tensor, weights: torch.Tensor) -> float:
    """Upper bound of |row| over all gathered rows sum_j w_j table[r_j]: max|table| * max_i sum_j |w_ij|."""
    if table.numel() == 0 or weights.numel() == 0:
        return 0.0
    lo, hi = torch.aminmax(table)  # no table-sized |table| temporary
    return max(-float(lo), float(hi)) * float(weights.abs().sum(dim=1).amax())


def _exp2_rows_(x: torch.Tensor, shift: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """In place x <- 2^(x - m) with m = rowmax (shift) or 0; returns (m (rows,), rowsum of the new x (rows,))."""
    if shift:
        x_max = x.amax(dim=1, keepdim=True)
        x.sub_(x_max)
    else:
        x_max = x.new_zeros(x.shape[0], 1)
    x.exp2_()
    return x_max[:, 0], x.sum(dim=1)


def _distinct_teacher_rows(t_rows, t_weights, cells: torch.Tensor, chunks):
    """Deduplicates the teacher rows within each chunk (one row per distinct V_d cell: ~40% fewer rows at
    R-50 sizes). Returns (rows, weights) of the distinct rows, chunk by chunk; [(u0, u1)] per chunk; and for
    every pair (device) the index of its row counted from its chunk's u0."""
    n = cells.shape[0]
    sizes = torch.tensor([p1 - p0 for _, _, p0, p1 in chunks])
    chunk_of_pair = torch.repeat_interleave(torch.arange(len(chunks)), sizes)
    span = int(cells.max()) + 1
    keys, inverse = torch.unique(chunk_of_pair * span + cells.long(), return_inverse=True)  # sorted: by chunk
    first = torch.full((keys.shape[0],), n, dtype=torch.long).scatter_reduce_(0, inverse, torch.arange(n), "amin")
    starts = torch.searchsorted(keys, torch.arange(len(chunks) + 1) * span).tolist()
    local = inverse - torch.tensor(starts[:-1])[chunk_of_pair]
    pick = host_to_device(first, t_rows.device)
    return t_rows[pick], t_weights[pick], list(zip(starts[:-1], starts[1:])), host_to_device(local, t_rows.device)


# Below this many matched pairs per image (e.g. 96-px demo crops: ~200), per-image chunks would be many tiny
# kernels on a GPU; the sparse form then handles the whole batch in a few chunks.
_DENSE_MIN_PAIRS_PER_IMAGE = 1024


def _dense_taps(rows: torch.Tensor, weights: torch.Tensor, width: int) -> torch.Tensor:
    """(cells, taps) local rows in [0, width) and weights -> dense (cells, width) tap matrix."""
    return weights.new_zeros(rows.shape[0], width).scatter_add_(1, rows, weights)


class _FusedDistillation(torch.autograd.Function):
    """Loss and its gradient w.r.t. the student table in one chunked pass (see module docstring).

    Per chunk of student cells and their pairs: teacher rows -> exp2 in place -> per-cell target (sum of the
    pairs' distributions, stored negated); student rows -> cross term with the target, log-sum-exp, then
    k softmax - target in the target's buffer, scattered into the (small) gradient table. The (rows, L) blocks
    live in three buffers allocated once per call and reused by every chunk.

    Gathers and scatters are products with the tap matrices, in one of two forms:
      * sparse (CPU): 4 taps per row as CSR / COO matrices over the whole table. Fewest operations; on a CPU the
        loop is bound by memory traffic, and cache-sized chunks keep it there.
      * dense (`dense=True`, GPUs): chunks never straddle an image, so the taps of a chunk form a dense
        (rows, h*w) matrix against the image's h*w table rows, and each gather / scatter is one GEMM. 12x the
        arithmetic of the sparse form at h*w = 49, but GEMMs run near peak on a GPU while sparse kernels with a
        few long output rows (the scatter) do not.
    """

    @staticmethod
    def forward(ctx, student_table, teacher_table, center, student, teacher, temps, pairs_per_chunk, dense, kernel):
        with torch.autocast(student_table.device.type, enabled=False):
            if kernel is not None:
                return _FusedDistillation._run_compiled(ctx, kernel, student_table, teacher_table, center, student,
                                                        teacher, temps)
            return _FusedDistillation._run(ctx, student_table, teacher_table, center, student, teacher, temps,
                                           pairs_per_chunk, dense)

    @staticmethod
    def _run_compiled(ctx, kernel, student_table, teacher_table, center, student, teacher, temps):
        """The same loss and gradient by the compiled CPU kernel (native.py), one V_q cell at a time: every row
        is built in a cache-resident buffer, so no chunk of rows ever goes through memory."""
        s_temp, t_temp = temps
        counts = student.counts if student.counts is not None else torch.ones(student.rows.shape[0], dtype=torch.long)
        n = int(counts.sum())
        pair_start = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(torch.int64).contiguous()
        t_table = ((teacher_table - center.reshape(1, -1)) * (_LOG2E / t_temp)).contiguous()
        s_table = (student_table * (_LOG2E / s_temp)).contiguous()
        grad = torch.zeros_like(s_table) if ctx.needs_input_grad[0] else None
        i64, f32 = torch.int64, torch.float32
        total = run_distill_kernel(kernel, s_table, t_table,
                                   student.rows.to(i64).contiguous(), student.weights.to(f32).contiguous(), pair_start,
                                   teacher.rows.to(i64).contiguous(), teacher.weights.to(f32).contiguous(),
                                   None if teacher.cells is None else teacher.cells.to(i64).contiguous(), grad,
                                   torch.get_num_threads())
        if grad is not None:
            ctx.save_for_backward(grad.div_(s_temp * max(n, 1)))
        return student_table.new_tensor(total * math.log(2.0) / max(n, 1))

    @staticmethod
    def _run(ctx, student_table, teacher_table, center, student, teacher, temps, pairs_per_chunk, dense):
        s_temp, t_temp = temps
        counts = student.counts if student.counts is not None else torch.ones(student.rows.shape[0], dtype=torch.long)
        n = int(counts.sum())
        dev = student_table.device
        k_all = host_to_device(counts, dev)
        hw = student.rows_per_image
        # Temperatures, log2(e) and the centre folded into the (small) tables: blocks hold logits in base 2. The
        # taps of a cell sum to 1, so the gathered teacher row of (t - c) log2(e) / t_t taps rows of that table.
        t_table = (teacher_table - center.reshape(1, -1)) * (_LOG2E / t_temp)
        s_table = student_table * (_LOG2E / s_temp)
        t_rows, t_weights = teacher.rows, teacher.weights
        # Row-max shifts (two passes over every block) only where the logits could overflow exp2(): the rows are
        # convex combinations of table rows, and at the reference settings |logit| <= 2 / t_t = 50 (72 in base 2).
        # On a GPU the bound would cost host synchronisations (idle GPU) while the two passes are cheap: always
        # shift there.
        t_shift = s_shift = True
        if dev.type == "cpu":
            t_shift = _logit_bound(t_table, t_weights) > _EXP2_SAFE_BOUND
            s_shift = _logit_bound(s_table, student.weights) > _EXP2_SAFE_BOUND
        chunks = _chunks(counts, max(pairs_per_chunk, 1), student.image if dense else None)
        # Teacher rows per chunk: [u0, u1) of (t_rows, t_weights), and for every pair its row within the chunk.
        if not dense and teacher.cells is not None:
            t_rows, t_weights, t_bounds, t_local = _distinct_teacher_rows(t_rows, t_weights, teacher.cells, chunks)
        else:
            t_bounds = [(p0, p1) for _, _, p0, p1 in chunks]
            t_local = None
        width = student_table.shape[1]
        t_buf = student_table.new_empty(max(u1 - u0 for u0, u1 in t_bounds), width)
        s_buf = student_table.new_empty(max(c1 - c0 for c0, c1, _, _ in chunks), width)
        target_buf = torch.empty_like(s_buf)
        grad = torch.zeros_like(student_table) if ctx.needs_input_grad[0] else None
        total = student_table.new_zeros(())
        for (c0, c1, p0, p1), (u0, u1) in zip(chunks, t_bounds):
            cells, rows, k = c1 - c0, u1 - u0, k_all[c0:c1]
            if dense:
                r0 = int(student.image[c0]) * hw
                t_taps = _dense_taps(teacher.rows[u0:u1] - r0, teacher.weights[u0:u1].float(), hw)
                x = torch.mm(t_taps, t_table[r0:r0 + hw], out=t_buf[:rows])
            else:
                x = torch.addmm(t_buf[:rows], _gather_matrix(t_rows[u0:u1], t_weights[u0:u1], t_table.shape[0]),
                                t_table, beta=0, out=t_buf[:rows])
            _, x_sum = _exp2_rows_(x, t_shift)
            cols = torch.arange(p1 - p0, device=dev) if t_local is None else t_local[p0:p1]  # pair -> teacher row
            norm = torch.sparse_csr_tensor(torch.cat([k.new_zeros(1), k.cumsum(0)]), cols, -x_sum.reciprocal()[cols],
                                           (cells, rows), check_invariants=False)
            # minus the per-cell target (sum of the pairs' p_t): negated, so the gradient below is one pass
            neg_target = torch.addmm(target_buf[:cells], norm, x, beta=0, out=target_buf[:cells])
            if dense:
                s_taps = _dense_taps(student.rows[c0:c1] - r0, student.weights[c0:c1].float(), hw)
                z = torch.mm(s_taps, s_table[r0:r0 + hw], out=s_buf[:cells])
            else:
                z = torch.addmm(s_buf[:cells], _gather_matrix(student.rows[c0:c1], student.weights[c0:c1],
                                                             s_table.shape[0]), s_table, beta=0, out=s_buf[:cells])
            neg_cross = neg_target.reshape(-1) @ z.reshape(-1)
            z_max, z_sum = _exp2_rows_(z, s_shift)
            total = total + (k * (z_max + z_sum.log2())).sum() + neg_cross  # base 2: times ln 2 below
            if grad is not None:  # d/dz of the chunk's sum: k softmax(z) - target, in the target's buffer
                g = neg_target.addcmul_(z, (k / z_sum)[:, None])
                if dense:
                    grad[r0:r0 + hw].addmm_(s_taps.t(), g)
                else:
                    grad.addmm_(_scatter_matrix(student.rows[c0:c1], student.weights[c0:c1], grad.shape[0]), g)
        if grad is not None:
            ctx.save_for_backward(grad.div_(s_temp * max(n, 1)))
        return total * (math.log(2.0) / max(n, 1))

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * grad_output, None, None, None, None, None, None, None, None


# Implementations of the CPU distillation loss (MODEL.PLRC.DISTILL_CPU_KERNEL): "auto" = the compiled kernel where it
# builds (native.py), else PyTorch ops; "compiled" = the compiled kernel or an error; "torch" = PyTorch ops.
DISTILL_KERNELS = ("auto", "compiled", "torch")


def matched_distillation_loss(student: CellTables, teacher: CellTables, center, student_temperature: float,
                              teacher_temperature: float, chunk_size: int,
                              dense: Optional[bool] = None, kernel: str = "auto") -> torch.Tensor:
    """`affinity_distillation_loss` of the n matched pairs, from the cell tables (float32).

    teacher rows are per pair; student rows per pair or per distinct cell with `counts`. Pairs are
    processed about `chunk_size` at a time (0: all at once), so peak memory holds one chunk's (chunk, L)
    rows. Gradients reach student.table only (the teacher and centre are constants).
    dense: gathers and scatters as per-image dense products (needs student.image and .rows_per_image; chunks
    then also end at every image); None = dense on GPUs when the student side has them and the images average
    >= _DENSE_MIN_PAIRS_PER_IMAGE pairs (R-50 at 224 px: ~4400), else sparse (CPUs; small crops).
    kernel: one of DISTILL_KERNELS; applies to CPU tensors (GPUs always use PyTorch ops). The compiled kernel
    ignores chunk_size and dense (it holds three rows per thread, never a chunk).
    """
    if kernel not in DISTILL_KERNELS:
        raise ValueError(f"kernel must be one of {DISTILL_KERNELS}, got {kernel!r}")
    if student.rows.shape[0] == 0:
        return student.table.sum() * 0
    w = teacher.weights
    if w.device.type == "cpu" and not torch.allclose(w.sum(1), w.new_ones(()).expand(w.shape[0]), atol=1e-5):
        raise ValueError("teacher tap weights must sum to 1 per cell (bilinear taps, matching.cell_taps)")
    has_images = student.image is not None and student.rows_per_image > 0
    if dense is None:  # dense pays off where an image's block is large; small ones would be launch-bound
        dense = has_images and student.table.device.type != "cpu" and \
            teacher.rows.shape[0] >= _DENSE_MIN_PAIRS_PER_IMAGE * int(student.image.unique().numel())
    elif dense and not has_images:
        raise ValueError("dense distillation needs CellTables.image and .rows_per_image on the student side")
    compiled = None
    if student.table.device.type == "cpu" and kernel != "torch":
        compiled = load_distill_kernel(required=kernel == "compiled")
        if compiled is not None and max(student.rows.shape[1], teacher.rows.shape[1]) > compiled.max_taps:
            if kernel == "compiled":
                raise ValueError(f"the compiled distillation kernel takes at most {compiled.max_taps} taps per cell")
            compiled = None
    elif kernel == "compiled":
        raise ValueError(f"the compiled distillation kernel runs on CPU tensors, not {student.table.device.type}")
    chunk = teacher.rows.shape[0] if chunk_size <= 0 else chunk_size
    return _FusedDistillation.apply(student.table, teacher.table.detach(), center.detach().float(), student, teacher,
                                    (student_temperature, teacher_temperature), chunk, dense, compiled)


@torch.no_grad()
def matched_teacher_sum(teacher: CellTables) -> torch.Tensor:
    """(1, M*M + logits) sum over the matched pairs of the teacher rows, without building them: the rows are
    linear in the table, so the sum is (total tap weight per table row) @ table."""
    per_row = teacher.table.new_zeros(teacher.table.shape[0])
    per_row.index_add_(0, teacher.rows.reshape(-1), teacher.weights.reshape(-1).to(per_row.dtype))
    return (per_row @ teacher.table)[None]
