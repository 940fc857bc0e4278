"""Every PLRC setting, declared once.

Each key carries a comment: the paper/spec symbol, the reference value (the default) and the unit.
Shorthand used across plrc_d2: N images, V views, R regions, P points per region, D embedding dim,
K queue length, S crop size, M distillation map size.
"""
from detectron2.config import CfgNode as CN

from .modeling.losses import DISTILL_KERNELS

__all__ = ["add_plrc_config", "validate_plrc_config"]

REGION_SOURCES = ("grid", "felzenszwalb", "annotations")
MOMENTUM_SCHEDULES = ("constant", "cosine")


def add_plrc_config(cfg):
    """Adds MODEL.PLRC.*, INPUT.PLRC.* and PLRC_VIS.* to `cfg`. A second call changes nothing."""
    _C = cfg
    if "PLRC" in _C.MODEL:
        return cfg
    _C.MODEL.PLRC = CN()
    m = _C.MODEL.PLRC
    # ---- encoders and heads ----
    m.IN_FEATURE = "res5"  # backbone feature used by all heads (stride 32: 7x7 at S=224)
    m.ZERO_INIT_RESIDUAL = True  # zero-init the last norm gamma of each residual block (reference: on)
    m.DENSE_HIDDEN_DIM = 2048  # dense head g: 1x1 conv C->2048, ReLU, ->D (reference 2048)
    m.EMBED_DIM = 128  # D, output of g, used by the point and image losses (reference 128)
    m.DISTILL_HIDDEN_DIM = 2048  # distillation head h: C->2048-BN-ReLU->2048-BN-ReLU->u (reference 2048)
    m.DISTILL_DIM = 256  # dim of u, the L2-normalised distillation embedding (reference 256)
    m.DISTILL_NUM_LOGITS = 4096  # weight-normalised Linear(u -> l), no bias, gain frozen at 1 (reference 4096)
    # ---- momentum encoder ----
    m.MOMENTUM = 0.999  # m, EMA of the whole online encoder incl. heads (reference 0.999, constant)
    m.MOMENTUM_SCHEDULE = "constant"  # "constant" (reference) or "cosine" (m -> 1 over SOLVER.MAX_ITER)
    m.SHUFFLE_BN = True  # shuffle the key batch across ranks before the momentum encoder (Shuffle-BN)
    # ---- image-level InfoNCE (MoCo v2) ----
    m.QUEUE_SIZE = 65536  # K, queue of all-gathered keys (reference 65536); multiple of the global batch
    m.IMAGE_TEMPERATURE = 0.2  # tau of the image InfoNCE (reference 0.2)
    # ---- point-level region contrast ----
    m.POINT_TEMPERATURE = 0.2  # tau of the supervised-contrastive point loss (reference 0.2)
    m.POINT_BASE_TEMPERATURE = 0.07  # loss scaled by POINT_TEMPERATURE / this (SupCon base, reference 0.07)
    # ---- point affinity distillation ----
    m.MAP_SIZE = 56  # M, h x w maps are upsampled (bilinear) to M x M (reference 56)
    m.MATCH_RADIUS = 0.5  # V_q/V_d cells match when centres are closer than this x the larger cell diagonal
    m.AFFINITY_DIVISOR = 128.0  # affinities u_i . u_a are divided by this (reference 128)
    m.STUDENT_TEMPERATURE = 0.1  # tau_s (reference 0.1)
    m.TEACHER_TEMPERATURE = 0.07  # tau_t after warm-up (reference 0.07)
    m.TEACHER_TEMPERATURE_START = 0.04  # tau_t at iteration 0 (reference 0.04)
    m.TEACHER_TEMPERATURE_WARMUP = 0.3  # fraction of SOLVER.MAX_ITER of the linear tau_t ramp (reference 0.3)
    m.CENTER_MOMENTUM = 0.9  # c <- 0.9 c + 0.1 mean(t), all-reduced (reference 0.9)
    m.DISTILL_CHUNK_PAIRS = -1  # matched pairs per chunk of the distillation loss (speed / memory knob, not a
    #   method setting): -1 = by device (256 on CPU, where chunks that stay in cache are fastest; 16384 on GPU),
    #   0 = all pairs in one chunk
    m.DISTILL_CPU_KERNEL = "auto"  # CPU implementation of the distillation loss (speed knob, same loss): "auto" =
    #   the compiled kernel (plrc_d2/modeling/csrc, built on first use with the machine's C compiler), PyTorch ops
    #   if it cannot be built; "compiled" = the compiled kernel or an error; "torch" = PyTorch ops
    # ---- total loss: L = IMAGE w * L_image + POINT w * L_point + DISTILL w * L_distill ----
    m.IMAGE_LOSS_WEIGHT = 0.7  # reference argument value 0.7 (the reference code, as run: 1.0)
    m.POINT_LOSS_WEIGHT = 0.3  # reference argument value 0.3 (as run: 0.21)
    m.DISTILL_LOSS_WEIGHT = 0.3  # reference argument value 0.3 (as run: 0.21)

    _C.INPUT.PLRC = CN()
    i = _C.INPUT.PLRC
    # ---- views: V_q (query), V_k (key), V_d (distillation key) ----
    i.CROP_SIZE = 224  # S, pixels, every view is S x S (reference 224)
    i.CROP_SCALE = (0.2, 1.0)  # RandomResizedCrop area fraction of the original image (reference)
    i.CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop aspect ratio w/h (reference)
    i.FLIP_PROB = 0.5  # horizontal flip probability (reference 0.5)
    i.COLOR_JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue (reference)
    i.COLOR_JITTER_PROB = 0.8  # (reference 0.8)
    i.GRAYSCALE_PROB = 0.2  # (reference 0.2)
    i.BLUR_SIGMA = (0.1, 2.0)  # Gaussian blur sigma ~ U[a, b], pixels of the S x S view (reference)
    i.BLUR_PROB = 0.5  # (reference 0.5)
    i.DISTILL_MIN_OVERLAP = 0.5  # |A n B| / max(|A|,|B|) of V_q and V_d, original-image pixels (reference 0.5)
    i.MAX_CROP_TRIES = 50  # cap on crop re-draws for the region/overlap constraints (counted, logged)
    i.REUSE_KEY_AS_DISTILL = False  # use V_k as V_d when it satisfies the overlap (one key forward less)
    # ---- regions ----
    i.REGION_SOURCE = "grid"  # "grid" (reference), "felzenszwalb" or "annotations"
    i.GRID_SIZE = (4, 4)  # rows, cols of the grid regions (reference 4x4 = 16)
    i.FELZENSZWALB_SCALE = 1000.0  # skimage felzenszwalb scale (DetCon: 1000)
    i.FELZENSZWALB_SIGMA = 0.8  # skimage felzenszwalb sigma
    i.FELZENSZWALB_MIN_SIZE = 1000  # skimage felzenszwalb min_size, pixels of the original image (DetCon: 1000)
    i.FELZENSZWALB_MAX_SIDE = 256  # segment at this longer side (pixels) to keep the worker fast
    i.REGION_CACHE_DIR = ""  # optional cache of computed region maps, keyed by file path ("" = off)
    i.REGION_MAP_SIZE = 56  # region map read per view at this size (pixels; reference 56 = M)
    # ---- points ----
    # R = R_shared: regions visible in both V_q and V_k picked per image (reference 1). Rows beyond the
    # number of shared regions are marked invalid; R = the number of regions (16 for 4x4) means "all".
    i.NUM_SHARED_REGIONS = 1
    i.POINTS_PER_REGION = 16  # P points per picked region per view (reference: 32 drawn, 16 used)
    # ---- dataset index ----
    i.FILE_INDEX = ""  # folder datasets: a list file of image paths to use instead of walking the folder

    _C.PLRC_VIS = CN()
    v = _C.PLRC_VIS
    v.PERIOD = 0  # iterations between training-time panels (TensorBoard + PNG); 0 = off
    v.NUM_QUERY_POINTS = 4  # query points whose affinity maps a panel shows
    return cfg


def _fail(key, value, why):
    raise ValueError(f"Invalid config {key}={value!r}: {why}")


def validate_plrc_config(cfg, world_size: int = 1):
    """Rejects nonsense settings with a message that names the key. Returns cfg."""
    m, i = cfg.MODEL.PLRC, cfg.INPUT.PLRC
    for key in ("IMAGE_TEMPERATURE", "POINT_TEMPERATURE", "POINT_BASE_TEMPERATURE",
                "STUDENT_TEMPERATURE", "TEACHER_TEMPERATURE", "TEACHER_TEMPERATURE_START",
                "AFFINITY_DIVISOR"):
        if not m[key] > 0:
            _fail(f"MODEL.PLRC.{key}", m[key], "must be > 0")
    for key in ("EMBED_DIM", "DENSE_HIDDEN_DIM", "DISTILL_HIDDEN_DIM", "DISTILL_DIM",
                "DISTILL_NUM_LOGITS", "MAP_SIZE", "QUEUE_SIZE"):
        if int(m[key]) < 1:
            _fail(f"MODEL.PLRC.{key}", m[key], "must be a positive integer")
    if not 0.0 <= m.MOMENTUM <= 1.0:
        _fail("MODEL.PLRC.MOMENTUM", m.MOMENTUM, "must lie in [0, 1]")
    if m.MOMENTUM_SCHEDULE not in MOMENTUM_SCHEDULES:
        _fail("MODEL.PLRC.MOMENTUM_SCHEDULE", m.MOMENTUM_SCHEDULE, f"choose one of {MOMENTUM_SCHEDULES}")
    if not 0.0 <= m.CENTER_MOMENTUM < 1.0:
        _fail("MODEL.PLRC.CENTER_MOMENTUM", m.CENTER_MOMENTUM, "must lie in [0, 1)")
    if not 0.0 <= m.TEACHER_TEMPERATURE_WARMUP <= 1.0:
        _fail("MODEL.PLRC.TEACHER_TEMPERATURE_WARMUP", m.TEACHER_TEMPERATURE_WARMUP,
              "is a fraction of SOLVER.MAX_ITER in [0, 1]")
    if int(m.DISTILL_CHUNK_PAIRS) < -1:
        _fail("MODEL.PLRC.DISTILL_CHUNK_PAIRS", m.DISTILL_CHUNK_PAIRS, "must be >= -1 (-1 = by device, 0 = one chunk)")
    if m.DISTILL_CPU_KERNEL not in DISTILL_KERNELS:
        _fail("MODEL.PLRC.DISTILL_CPU_KERNEL", m.DISTILL_CPU_KERNEL, f"choose one of {DISTILL_KERNELS}")
    if not m.MATCH_RADIUS > 0:
        _fail("MODEL.PLRC.MATCH_RADIUS", m.MATCH_RADIUS, "must be > 0")
    weights = [m.IMAGE_LOSS_WEIGHT, m.POINT_LOSS_WEIGHT, m.DISTILL_LOSS_WEIGHT]
    if min(weights) < 0 or sum(weights) <= 0:
        _fail("MODEL.PLRC.*_LOSS_WEIGHT", weights, "weights must be >= 0 and not all 0")
    global_batch = cfg.SOLVER.IMS_PER_BATCH
    if global_batch < 1:
        _fail("SOLVER.IMS_PER_BATCH", global_batch, "must be >= 1")
    if global_batch % world_size:
        _fail("SOLVER.IMS_PER_BATCH", global_batch, f"must be divisible by the {world_size} processes")
    if m.QUEUE_SIZE % global_batch:
        _fail("MODEL.PLRC.QUEUE_SIZE", m.QUEUE_SIZE,
              f"must be a multiple of the global batch SOLVER.IMS_PER_BATCH={global_batch}")

    if int(i.CROP_SIZE) < 32:
        _fail("INPUT.PLRC.CROP_SIZE", i.CROP_SIZE, "must be >= 32 pixels (the backbone stride)")
    lo, hi = i.CROP_SCALE
    if not 0 < lo <= hi <= 1:
        _fail("INPUT.PLRC.CROP_SCALE", i.CROP_SCALE, "needs 0 < min <= max <= 1")
    lo, hi = i.CROP_RATIO
    if not 0 < lo <= hi:
        _fail("INPUT.PLRC.CROP_RATIO", i.CROP_RATIO, "needs 0 < min <= max")
    for key in ("FLIP_PROB", "COLOR_JITTER_PROB", "GRAYSCALE_PROB", "BLUR_PROB"):
        if not 0.0 <= i[key] <= 1.0:
            _fail(f"INPUT.PLRC.{key}", i[key], "is a probability in [0, 1]")
    if len(i.COLOR_JITTER) != 4 or min(i.COLOR_JITTER) < 0:
        _fail("INPUT.PLRC.COLOR_JITTER", i.COLOR_JITTER, "needs 4 values >= 0")
    lo, hi = i.BLUR_SIGMA
    if not 0 < lo <= hi:
        _fail("INPUT.PLRC.BLUR_SIGMA", i.BLUR_SIGMA, "needs 0 < min <= max")
    if not 0.0 < i.DISTILL_MIN_OVERLAP <= 1.0:
        _fail("INPUT.PLRC.DISTILL_MIN_OVERLAP", i.DISTILL_MIN_OVERLAP, "must lie in (0, 1]")
    if int(i.MAX_CROP_TRIES) < 1:
        _fail("INPUT.PLRC.MAX_CROP_TRIES", i.MAX_CROP_TRIES, "must be >= 1")
    if i.REGION_SOURCE not in REGION_SOURCES:
        _fail("INPUT.PLRC.REGION_SOURCE", i.REGION_SOURCE, f"choose one of {REGION_SOURCES}")
    rows, cols = i.GRID_SIZE
    if rows < 1 or cols < 1 or rows * cols < 2:
        _fail("INPUT.PLRC.GRID_SIZE", i.GRID_SIZE, "needs at least 2 regions (a 1x1 grid has no negatives)")
    if int(i.REGION_MAP_SIZE) < 2:
        _fail("INPUT.PLRC.REGION_MAP_SIZE", i.REGION_MAP_SIZE, "must be >= 2")
    if int(i.NUM_SHARED_REGIONS) < 1:
        _fail("INPUT.PLRC.NUM_SHARED_REGIONS", i.NUM_SHARED_REGIONS, "must be >= 1")
    if int(i.POINTS_PER_REGION) < 1:
        _fail("INPUT.PLRC.POINTS_PER_REGION", i.POINTS_PER_REGION, "must be >= 1")
    if cfg.PLRC_VIS.PERIOD < 0:
        _fail("PLRC_VIS.PERIOD", cfg.PLRC_VIS.PERIOD, "must be >= 0 (0 = off)")
    return cfg
