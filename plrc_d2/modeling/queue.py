"""FIFO queue of key embeddings (MoCo), as buffers so DetectionCheckpointer saves and restores it.

Shorthand: K queue length, D embedding dim, B keys enqueued per step (the all-gathered global batch).
"""
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["FeatureQueue"]


class FeatureQueue(nn.Module):
    """queue (K, D) float32, L2-normalised rows; ptr (1,) int64 index of the next slot to overwrite.

    The pointer lives on the device and the write is an `index_copy_` at (ptr + arange(B)) % K, so an
    update needs no host synchronisation. All ranks enqueue the same gathered keys and stay identical.
    """

    def __init__(self, *, size: int, dim: int):
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"FeatureQueue needs size >= 1 and dim >= 1, got size={size}, dim={dim}")
        self.register_buffer("queue", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))

    @property
    def size(self) -> int:
        return self.queue.shape[0]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """keys (B, D): overwrite the B oldest entries (B > K keeps the last K keys)."""
        keys = keys.detach().to(self.queue.dtype)[-self.size:]
        slots = (self.ptr + torch.arange(keys.shape[0], device=self.queue.device)) % self.size
        self.queue.index_copy_(0, slots, keys)
        self.ptr.copy_((self.ptr + keys.shape[0]) % self.size)
