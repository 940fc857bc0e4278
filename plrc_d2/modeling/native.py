"""The compiled CPU kernel of the distillation loss (csrc/distill_cpu.c), built on first use and loaded with ctypes.

The kernel is plain C99 with no dependencies: it builds in well under a second with the machine's C compiler
($CC, else cc / gcc / clang) and is cached per source, compiler flags and compiler in $PLRC_D2_CACHE (default
$XDG_CACHE_HOME/plrc_d2 or ~/.cache/plrc_d2). Without a compiler, `load_distill_kernel()` returns None and the
distillation runs on PyTorch ops (same loss; about 2x slower for this term on a CPU).
"""
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import List, Optional

import torch

__all__ = ["NativeKernelError", "load_distill_kernel", "distill_kernel_status", "run_distill_kernel"]

logger = logging.getLogger(__name__)

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "distill_cpu.c")


class NativeKernelError(RuntimeError):
    """The compiled kernel was asked for explicitly but cannot be built or loaded."""


def _cache_dir() -> str:
    if os.environ.get("PLRC_D2_CACHE"):
        return os.environ["PLRC_D2_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "plrc_d2")


def _compiler() -> Optional[str]:
    for name in [os.environ.get("CC")] + ["cc", "gcc", "clang"]:
        if name:
            path = shutil.which(name)
            if path:
                return path
            if os.environ.get("CC") == name:  # an explicit $CC that does not exist: no silent substitute
                return None
    return None


def _cpu_flags() -> List[str]:
    """Vector ISA flags: AVX2 + FMA where the CPU has both (x86-64), else the compiler's baseline for the
    architecture (the kernel's 8-wide vectors are then lowered to SSE / NEON pairs). No -march=native: a cache
    on a shared home directory may serve machines with different CPUs; the flags are part of the cache key."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        try:
            with open("/proc/cpuinfo") as f:
                words = set(f.read().split())
        except OSError:
            words = set()
        if {"avx2", "fma"} <= words:
            return ["-mavx2", "-mfma"]
    return []


def _build(cc: str) -> str:
    with open(_SOURCE, "rb") as f:
        source = f.read()
    flags = ["-O3", "-std=c99", "-shared", "-fPIC", "-Wno-psabi"] + _cpu_flags()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), version.encode(),
                                     platform.machine().encode()])).hexdigest()[:16]
    out_dir = _cache_dir()
    path = os.path.join(out_dir, f"distill_cpu-{key}.so")
    if os.path.exists(path):
        return path
    os.makedirs(out_dir, exist_ok=True)
    # build under a temporary name, then rename: ranks / workers building at once never load a partial file
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        res = subprocess.run([cc] + flags + [_SOURCE, "-o", tmp, "-lm"], capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise NativeKernelError(f"{cc} failed to build {_SOURCE}:\n{res.stderr[-2000:]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


@functools.lru_cache(maxsize=None)
def _load():
    """(ctypes function, None) or (None, reason)."""
    cc = _compiler()
    if cc is None:
        return None, "no C compiler found ($CC, cc, gcc or clang)"
    try:
        lib = ctypes.CDLL(_build(cc))
    except (NativeKernelError, OSError, subprocess.SubprocessError) as e:
        return None, str(e)
    fn = lib.plrc_distill_cells
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    fn.argtypes = [p, p, i64, p, p, p, p, p, p, i64, i64, i64, p, p]
    fn.restype = ctypes.c_double
    lib.plrc_distill_max_taps.restype = ctypes.c_int
    lib.plrc_distill_cache_slots.restype = ctypes.c_int
    return _Kernel(fn, int(lib.plrc_distill_max_taps()), int(lib.plrc_distill_cache_slots())), None


@dataclass(frozen=True)
class _Kernel:
    fn: object
    max_taps: int
    cache_slots: int


def load_distill_kernel(required: bool = False):
    """The kernel (.max_taps: taps per cell it accepts) or None when it cannot be built (logged once); `required` raises NativeKernelError."""
    kernel, reason = _load()
    if kernel is None:
        if required:
            raise NativeKernelError(f"the compiled distillation kernel is unavailable: {reason}")
        if not getattr(load_distill_kernel, "_warned", False):
            load_distill_kernel._warned = True
            logger.warning(f"plrc_d2: compiled CPU distillation kernel unavailable ({reason}); using PyTorch ops")
    return kernel


def distill_kernel_status() -> str:
    kernel, reason = _load()
    return "built" if kernel is not None else f"unavailable ({reason})"


@functools.lru_cache(maxsize=4)
def _pool(threads: int, pid: int) -> ThreadPoolExecutor:
    """Per process (pid): a forked child does not inherit the parent's pool threads."""
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="plrc_distill")


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def run_distill_kernel(kernel, s_table, t_table, s_rows, s_w, pair_start, t_rows, t_w, t_ids: Optional[torch.Tensor],
                       grad: Optional[torch.Tensor], threads: int) -> float:
    """Runs the kernel on all cells, split into `threads` ranges of about equal pair counts (ctypes releases the
    GIL, so the ranges run in parallel). Returns the base-2 loss sum; adds the z-table gradient into `grad`.
    All tensors: contiguous CPU, float32 / int64 (see csrc/distill_cpu.c)."""
    fn = kernel.fn
    cells, taps = s_rows.shape
    width = s_table.shape[1]
    threads = max(1, min(threads, cells))
    bounds = [0, cells] if threads == 1 else \
        [0] + torch.searchsorted(pair_start, torch.linspace(0, int(pair_start[-1]), threads + 1)[1:-1].long()
                                 ).tolist() + [cells]
    bounds = sorted(set(bounds))
    grads = [grad] + [torch.zeros_like(grad) if grad is not None else None for _ in range(len(bounds) - 2)]
    work = torch.empty(len(bounds) - 1, (2 + kernel.cache_slots) * width, dtype=torch.float32)
    args = [_ptr(s_table), _ptr(t_table), width, _ptr(s_rows), _ptr(s_w), _ptr(pair_start), _ptr(t_rows), _ptr(t_w),
            _ptr(t_ids) if t_ids is not None else None, taps]

    def run(i):
        g = grads[i]
        return fn(*args, bounds[i], bounds[i + 1], _ptr(g) if g is not None else None, _ptr(work[i]))

    if len(bounds) == 2:
        total = run(0)
    else:
        total = sum(_pool(len(bounds) - 1, os.getpid()).map(run, range(len(bounds) - 1)))
    for g in grads[1:]:
        if g is not None:
            grad.add_(g)
    return total
