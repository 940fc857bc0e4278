"""PLRC meta-architecture: point-level region contrast + point affinity distillation + image InfoNCE.

Shorthand: N images (this rank), R regions per image, P points per region, D embedding dim, K queue
length, S crop size, h x w backbone map (S/32), M distillation map size, L = M*M + DISTILL_NUM_LOGITS.

Input: the mapper -> model contract of ../shared/DESIGN.md (see `parse_batch`). Training returns
{"loss_plrc_image", "loss_plrc_point", "loss_plrc_distill"}, each already multiplied by its weight.
Eval mode returns the online backbone's features {IN_FEATURE: (N, C, h, w)} of d["image"] (or of V_q).

The momentum (EMA) update runs inside `forward`, before the key forward, as in MoCo. Per-iteration
Python state (teacher temperature, momentum, iteration) is set by `plrc_d2.engine.hooks` through
`update_schedule`, as a pure function of the iteration, so `--resume` is exact.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from torch import nn
from torch.nn import functional as F
from torch.profiler import record_function

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.utils import comm

from .distributed import (all_reduce_sum, batch_shuffle, batch_unshuffle, concat_all_gather, host_to_device,
                          shuffle_permutation)
from .encoder import PLRCEncoder, ema_update_, make_momentum_copy, zero_init_residual
from .heads import DenseHead, DistillHead
from .losses import (CellTables, cell_table, image_infonce_loss, matched_distillation_loss, matched_teacher_sum,
                     point_region_contrast_loss)
from .matching import cell_taps, match_cells, point_labels, sample_points, tile_order
from .queue import FeatureQueue

__all__ = ["PLRC", "PLRCParams", "PLRCBatch", "parse_batch", "StepReport", "matched_cell_tables"]


# Default distillation chunk sizes (matched pairs; MODEL.PLRC.DISTILL_CHUNK_PAIRS = -1). On a CPU the chunk's
# (pairs, L) blocks should stay in cache (256 pairs x 7232 logits x 4 B = 7.4 MB; measured fastest on a 2-core
# CPU at R-50 sizes); on a GPU chunks only need to be large enough to keep the kernels busy.
DISTILL_CHUNK_PAIRS_CPU = 256
DISTILL_CHUNK_PAIRS_GPU = 16384


@dataclass
class PLRCParams:
    """Plain hyper-parameters of the losses (cfg keys MODEL.PLRC.*, see plrc_d2/config.py)."""

    image_temperature: float = 0.2
    point_temperature: float = 0.2
    point_base_temperature: float = 0.07
    map_size: int = 56
    match_radius: float = 0.5
    affinity_divisor: float = 128.0
    student_temperature: float = 0.1
    teacher_temperature: float = 0.07
    teacher_temperature_start: float = 0.04
    center_momentum: float = 0.9
    momentum: float = 0.999
    image_weight: float = 0.7
    point_weight: float = 0.3
    distill_weight: float = 0.3
    distill_chunk_pairs: int = -1  # -1: DISTILL_CHUNK_PAIRS_CPU / _GPU by device
    distill_cpu_kernel: str = "auto"  # losses.DISTILL_KERNELS
    shuffle_bn: bool = True
    reuse_key_as_distill: bool = False
    seed: int = 0

    def chunk_pairs(self, device_type: str) -> int:
        """Matched pairs per distillation chunk on this device type (distill_chunk_pairs, -1 = by device)."""
        if self.distill_chunk_pairs >= 0:
            return self.distill_chunk_pairs
        return DISTILL_CHUNK_PAIRS_CPU if device_type == "cpu" else DISTILL_CHUNK_PAIRS_GPU


@dataclass
class PLRCBatch:
    """One step's inputs, parsed from the contract.

    images: [V_q, V_k, V_d] normalised float (N, 3, S, S) on the model device (V_d is V_k when reused).
    points: [V_q, V_k] (N, R, P, 2) `points_wrt_view`, on the model device.
    region_valid: (N, R) bool on the model device.
    crop_boxes: [V_q, V_k, V_d] (N, 4) `crop_box_wrt_image`, kept on the CPU for the cell matching.
    image_size: (N, 2) (height, width) of the original images when every dict has them, else None.
    """

    images: List[torch.Tensor]
    points: List[torch.Tensor]
    region_valid: torch.Tensor
    crop_boxes: List[torch.Tensor]
    image_size: Optional[torch.Tensor]
    reuse_key: bool


def parse_batch(batched_inputs: List[dict], normalize, reuse_key_as_distill: bool) -> PLRCBatch:
    """Checks the mapper -> model contract (../shared/DESIGN.md) and stacks it; clear errors on bad input."""
    if not batched_inputs:
        raise ValueError("PLRC received an empty batch")
    num_views = len(batched_inputs[0].get("views", ()))
    reuse = reuse_key_as_distill or num_views == 2
    if num_views not in (2, 3) or (num_views == 2 and not reuse_key_as_distill):
        raise ValueError(f"PLRC expects d['views'] = [V_q, V_k, V_d] (3 views, or 2 with "
                         f"INPUT.PLRC.REUSE_KEY_AS_DISTILL); got {num_views}")
    views = [d["views"] for d in batched_inputs]
    order = [0, 1, 1] if reuse else [0, 1, 2]
    images = [normalize(torch.stack([v[i]["image"] for v in views])) for i in order[:2]]
    images.append(images[1] if reuse else normalize(torch.stack([v[2]["image"] for v in views])))
    device = images[0].device
    points = [torch.stack([v[i]["points"] for v in views]).to(device, non_blocking=True) for i in (0, 1)]
    if points[0].dim() != 4 or points[0].shape != points[1].shape or points[0].shape[-1] != 2:
        raise ValueError(f"points must be (R, P, 2) and equal in V_q and V_k, got {tuple(points[0].shape[1:])} "
                         f"and {tuple(points[1].shape[1:])}")
    valid = torch.stack([torch.as_tensor(d["region_valid"], dtype=torch.bool) for d in batched_inputs])
    if valid.shape != points[0].shape[:2]:
        raise ValueError(f"region_valid {tuple(valid.shape[1:])} does not match points {tuple(points[0].shape[1:3])}")
    boxes = [torch.stack([torch.as_tensor(v[i]["crop_box"]) for v in views]).float().cpu() for i in order]
    has_size = all("height" in d and "width" in d for d in batched_inputs)
    size = torch.tensor([[d["height"], d["width"]] for d in batched_inputs], dtype=torch.float64) if has_size else None
    return PLRCBatch(images, points, valid.to(device, non_blocking=True), boxes, size, reuse)


@dataclass
class StepReport:
    """Losses and metrics of one training step, copied to the host without blocking.

    The copy is queued at the end of `forward`; detectron2's own per-iteration `.item()` of the losses
    (SimpleTrainer.write_metrics) completes it, so reading it in a hook costs no extra synchronisation.
    """

    iteration: int
    names: List[str]
    values: torch.Tensor
    event: Optional[object]
    host_values: Dict[str, float]

    @classmethod
    def create(cls, iteration: int, losses: Dict[str, torch.Tensor], metrics: Dict[str, torch.Tensor],
               host_values: Dict[str, float]) -> "StepReport":
        names = list(losses) + list(metrics)
        stacked = torch.stack([v.detach().float().reshape(()) for v in list(losses.values()) + list(metrics.values())])
        event = None
        if stacked.is_cuda:
            stacked = stacked.to("cpu", non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        return cls(iteration, names, stacked, event, dict(host_values))

    def read(self) -> Dict[str, float]:
        """name -> float (waits only if the copy has not arrived yet)."""
        if self.event is not None:
            self.event.synchronize()
        out = dict(zip(self.names, self.values.tolist()))
        out.update(self.host_values)
        return out


def matched_cell_tables(u_q: torch.Tensor, u_d: torch.Tensor, u_k: torch.Tensor, w_q: torch.Tensor,
                        w_k: torch.Tensor, crop_box_q: torch.Tensor, crop_box_d: torch.Tensor,
                        image_size: Optional[torch.Tensor], params: PLRCParams):
    """The two sides of the distillation loss for one batch -> (student, teacher, number of matched pairs).

    u_q, u_d, u_k: (N, d_u, h, w) distillation maps of V_q (student), V_d (teacher) and V_k (anchors); w_q, w_k:
    (logits, d_u) unit-row weights of the online / momentum logits layers; crop boxes (N, 4) of V_q and V_d on
    the CPU (`crop_box_wrt_image`), so matching costs no device synchronisation. Student rows are built once per
    distinct V_q cell, teacher rows per pair (see losses.matched_distillation_loss); the teacher side is built
    without gradients.
    """
    p = params
    idx_q, idx_d = match_cells(crop_box_q, crop_box_d, p.map_size, p.match_radius, image_size)
    hw = tuple(u_q.shape[-2:])
    # chunks of consecutive V_q cells then cover compact patches (one feature cell's worth per tile)
    order = tile_order(idx_q, p.map_size, max(p.map_size // hw[0], 1))
    idx_q, idx_d = idx_q[order], idx_d[order]
    cells_q, counts = torch.unique_consecutive(idx_q, return_counts=True)  # pairs stay grouped by V_q cell
    device = u_q.device
    student = CellTables(cell_table(u_q.float(), u_k.float(), w_q, p.map_size, p.affinity_divisor),
                         *cell_taps(host_to_device(cells_q, device), p.map_size, hw), counts,
                         image=cells_q // (p.map_size * p.map_size), rows_per_image=hw[0] * hw[1])
    with torch.no_grad():
        teacher = CellTables(cell_table(u_d.float(), u_k.float(), w_k, p.map_size, p.affinity_divisor),
                             *cell_taps(host_to_device(idx_d, device), p.map_size, hw), cells=idx_d)
    return student, teacher, int(idx_q.shape[0])


@META_ARCH_REGISTRY.register()
class PLRC(nn.Module):
    @configurable
    def __init__(self, *, encoder: PLRCEncoder, queue_size: int, params: PLRCParams, pixel_mean, pixel_std):
        super().__init__()
        self.encoder = encoder
        self.momentum_encoder = make_momentum_copy(encoder)
        self.params = params
        embed_dim = encoder.dense_head.fc2.out_channels
        num_logits = encoder.distill_head.last_layer.weight.shape[0]
        self.queue = FeatureQueue(size=queue_size, dim=embed_dim)
        self.register_buffer("center", torch.zeros(1, params.map_size**2 + num_logits))
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self._online_params = list(self.encoder.parameters())
        self._momentum_params = list(self.momentum_encoder.parameters())
        self.iteration = 0
        self.teacher_temperature = params.teacher_temperature_start
        self.momentum = params.momentum
        self.last_report: Optional[StepReport] = None

    @classmethod
    def from_config(cls, cfg):
        m = cfg.MODEL.PLRC
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        if m.IN_FEATURE not in shapes:
            raise ValueError(f"MODEL.PLRC.IN_FEATURE={m.IN_FEATURE!r} is not a backbone output {sorted(shapes)}; "
                             "set MODEL.RESNETS.OUT_FEATURES accordingly")
        if m.ZERO_INIT_RESIDUAL:
            zero_init_residual(backbone)
        ch = shapes[m.IN_FEATURE].channels
        encoder = PLRCEncoder(
            backbone=backbone, in_feature=m.IN_FEATURE,
            dense_head=DenseHead(in_channels=ch, hidden_dim=m.DENSE_HIDDEN_DIM, embed_dim=m.EMBED_DIM),
            distill_head=DistillHead(in_channels=ch, hidden_dim=m.DISTILL_HIDDEN_DIM, distill_dim=m.DISTILL_DIM,
                                     num_logits=m.DISTILL_NUM_LOGITS, norm=cfg.MODEL.RESNETS.NORM))
        params = PLRCParams(
            image_temperature=m.IMAGE_TEMPERATURE, point_temperature=m.POINT_TEMPERATURE,
            point_base_temperature=m.POINT_BASE_TEMPERATURE, map_size=m.MAP_SIZE, match_radius=m.MATCH_RADIUS,
            affinity_divisor=m.AFFINITY_DIVISOR, student_temperature=m.STUDENT_TEMPERATURE,
            teacher_temperature=m.TEACHER_TEMPERATURE, teacher_temperature_start=m.TEACHER_TEMPERATURE_START,
            center_momentum=m.CENTER_MOMENTUM, momentum=m.MOMENTUM, image_weight=m.IMAGE_LOSS_WEIGHT,
            point_weight=m.POINT_LOSS_WEIGHT, distill_weight=m.DISTILL_LOSS_WEIGHT,
            distill_chunk_pairs=m.DISTILL_CHUNK_PAIRS, distill_cpu_kernel=m.DISTILL_CPU_KERNEL, shuffle_bn=m.SHUFFLE_BN,
            reuse_key_as_distill=cfg.INPUT.PLRC.REUSE_KEY_AS_DISTILL, seed=max(int(cfg.SEED), 0))
        return {"encoder": encoder, "queue_size": m.QUEUE_SIZE, "params": params,
                "pixel_mean": cfg.MODEL.PIXEL_MEAN, "pixel_std": cfg.MODEL.PIXEL_STD}

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def update_schedule(self, *, iteration: int, teacher_temperature: float, momentum: float) -> None:
        """Per-iteration values from the schedule hook (plain Python numbers: no device traffic)."""
        self.iteration, self.teacher_temperature, self.momentum = int(iteration), float(teacher_temperature), \
            float(momentum)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) in INPUT.FORMAT (any device) -> float (N, 3, S, S) on the model's device."""
        return (images.to(self.device, non_blocking=True).float() - self.pixel_mean) / self.pixel_std

    def forward(self, batched_inputs: List[dict]):
        if not self.training:
            return self.backbone_features(batched_inputs)
        batch = parse_batch(batched_inputs, self.normalize, self.params.reuse_key_as_distill)
        with record_function("plrc.online_encoder"):
            q = self.encoder(batch.images[0])  # V_q: dense g and distillation u, with gradients
        with torch.no_grad(), record_function("plrc.momentum_encoder"):
            ema_update_(self._momentum_params, self._online_params, self.momentum)
            k = self._momentum_forward(batch.images[1], 1, dense=True)  # V_k: g for keys, u for anchors
            d = k if batch.reuse_key else self._momentum_forward(batch.images[2], 2, dense=False)  # V_d: u
        with record_function("plrc.image_loss"):
            loss_image, key_embed, acc_image = self._image_loss(q["dense"], k["dense"])
        with record_function("plrc.point_loss"):
            loss_point, acc_point = self._point_loss(q["dense"], k["dense"], batch)
        with record_function("plrc.distill_loss"):
            loss_distill, num_pairs = self._distill_loss(q["u"], d["u"], k["u"], batch)
        self.queue.enqueue(concat_all_gather(key_embed))
        p = self.params
        losses = {"loss_plrc_image": p.image_weight * loss_image, "loss_plrc_point": p.point_weight * loss_point,
                  "loss_plrc_distill": p.distill_weight * loss_distill}
        self.last_report = StepReport.create(self.iteration, losses, {"plrc_image_acc": acc_image,
                                             "plrc_point_acc": acc_point}, {"plrc_matched_pairs": num_pairs})
        return losses

    def _momentum_forward(self, images: torch.Tensor, view: int, dense: bool) -> Dict[str, torch.Tensor]:
        """Momentum encoder on a key view, batch-shuffled across ranks (Shuffle-BN) when enabled."""
        if not self.params.shuffle_bn:
            return self.momentum_encoder(images, dense=dense, distill=True)
        world_n = images.shape[0] * comm.get_world_size()
        perm = shuffle_permutation(world_n, self.params.seed, 3 * self.iteration + view, images.device)
        x, idx_unshuffle = batch_shuffle(images, perm)
        out = self.momentum_encoder(x, dense=dense, distill=True)
        return {name: batch_unshuffle(v, idx_unshuffle) for name, v in out.items()}

    def _image_loss(self, dense_q: torch.Tensor, dense_k: torch.Tensor):
        """g maps (N, D, h, w) -> (loss, keys (N, D), top-1 accuracy) of the image InfoNCE."""
        q = F.normalize(dense_q.float().mean(dim=(2, 3)), dim=1)
        k = F.normalize(dense_k.float().mean(dim=(2, 3)), dim=1)
        negatives = self.queue.queue.clone()  # enqueued in place below; the graph keeps this copy
        loss = image_infonce_loss(q, k, negatives, self.params.image_temperature)
        with torch.no_grad():
            pos = (q * k).sum(1)
            acc = (pos > (q @ negatives.t()).max(dim=1).values).float().mean()
        return loss, k, acc

    def _point_loss(self, dense_q: torch.Tensor, dense_k: torch.Tensor, batch):
        """Point embeddings of V_q (grad) and V_k at the sampled points -> (SupCon loss, NN accuracy)."""
        feats = torch.cat([sample_points(dense_q, batch.points[0]), sample_points(dense_k, batch.points[1])])
        feats = F.normalize(feats.float(), dim=1)
        labels = point_labels(batch.region_valid, batch.points[0].shape[2]).repeat(2)
        loss = point_region_contrast_loss(feats, labels, self.params.point_temperature,
                                          self.params.point_base_temperature)
        with torch.no_grad():
            sim = feats @ feats.t()
            sim.fill_diagonal_(-2.0)
            sim = sim.masked_fill(labels[None, :] < 0, -2.0)
            hit = (labels[sim.argmax(dim=1)] == labels).float()
            acc = (hit * (labels >= 0)).sum() / (labels >= 0).sum().clamp_min(1)
        return loss, acc

    def _distill_loss(self, u_q: torch.Tensor, u_d: torch.Tensor, u_k: torch.Tensor, batch):
        """u maps (N, d_u, h, w) of V_q (student), V_d (teacher), V_k (anchors) -> (loss, #matched pairs)."""
        p = self.params
        with torch.autocast(self.device.type, enabled=False):
            w_q = self.encoder.distill_head.last_layer.normalized_weight().float()
            with torch.no_grad():
                w_k = self.momentum_encoder.distill_head.last_layer.normalized_weight().float()
            student, teacher, num_pairs = matched_cell_tables(u_q, u_d, u_k, w_q, w_k, batch.crop_boxes[0],
                                                              batch.crop_boxes[2], batch.image_size, p)
            loss = matched_distillation_loss(student, teacher, self.center.clone(), p.student_temperature,
                                             self.teacher_temperature, p.chunk_pairs(self.device.type),
                                             kernel=p.distill_cpu_kernel)
            self._update_center(teacher, num_pairs)
        return loss, num_pairs

    @torch.no_grad()
    def _update_center(self, teacher: CellTables, num_pairs: int) -> None:
        """c <- m c + (1 - m) mean(t) over all matched pairs of all ranks (unchanged if there are none)."""
        stats = torch.cat([matched_teacher_sum(teacher), teacher.table.new_full((1, 1), float(num_pairs))], 1)
        stats = all_reduce_sum(stats)
        count = stats[:, -1:]
        mean = stats[:, :-1] / count.clamp_min(1)
        m = self.params.center_momentum
        self.center.copy_(torch.where(count > 0, self.center * m + mean * (1 - m), self.center))

    @torch.no_grad()
    def backbone_features(self, batched_inputs: List[dict]) -> Dict[str, torch.Tensor]:
        """Eval mode: {IN_FEATURE: (N, C, h, w)} of the online backbone on d["image"] (or d["views"][0])."""
        imgs = [d["image"] if "image" in d else d["views"][0]["image"] for d in batched_inputs]
        return self.encoder.backbone(self.normalize(torch.stack(imgs)))

    @torch.no_grad()
    def _embed(self, images: List[torch.Tensor], momentum: bool, key: str) -> torch.Tensor:
        enc = self.momentum_encoder if momentum else self.encoder
        was_training = enc.training
        enc.eval()  # BN with running statistics: inspection must not touch the training state
        try:
            out = enc(self.normalize(torch.stack(list(images))), dense=key == "dense", distill=key == "u")[key]
        finally:
            enc.train(was_training)
        return F.normalize(out.float(), dim=1)

    def dense_embeddings(self, images: List[torch.Tensor], momentum: bool = False) -> torch.Tensor:
        """uint8 (3, S, S) images in INPUT.FORMAT -> (N, D, h, w) L2-normalised dense-head (g) output.
        No gradient; BN in eval mode (running statistics)."""
        return self._embed(images, momentum, "dense")

    def distill_embeddings(self, images: List[torch.Tensor], momentum: bool = False) -> torch.Tensor:
        """uint8 (3, S, S) images -> (N, d_u, h, w) unit-length u maps of the distillation head. No gradient."""
        return self._embed(images, momentum, "u")
