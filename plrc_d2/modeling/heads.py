"""PLRC heads applied per location of the backbone map (N, C, h, w) -- 1x1 convolutions.

dense head g:        C -> hidden, ReLU, -> D (no norm)                    -> (N, D, h, w)
distillation head h: C -> hidden-Norm-ReLU -> hidden-Norm-ReLU -> d_u, L2 -> u (N, d_u, h, w)
                     then a weight-normalised Linear(d_u -> L, no bias, gain frozen at 1) -> logits
"""
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.layers import Conv2d, get_norm

__all__ = ["DenseHead", "DistillHead", "NormalizedLinear"]


class DenseHead(nn.Module):
    """g: (N, C, h, w) -> (N, D, h, w), not normalised."""

    def __init__(self, *, in_channels: int, hidden_dim: int, embed_dim: int):
        super().__init__()
        self.fc1 = Conv2d(in_channels, hidden_dim, kernel_size=1)
        self.fc2 = Conv2d(hidden_dim, embed_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class NormalizedLinear(nn.Module):
    """Linear(in -> out, no bias) whose rows are L2-normalised: weight norm with the gain frozen at 1.

    Written out (3 lines) instead of torch's weight_norm parametrisation, which would add a gain
    parameter only to freeze it again.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def normalized_weight(self) -> torch.Tensor:
        """(out, in), unit rows."""
        return F.normalize(self.weight, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out)."""
        return F.linear(x, self.normalized_weight())


class DistillHead(nn.Module):
    """h: (N, C, h, w) -> u (N, d_u, h, w), unit length along dim 1; `logits(u)` applies the last layer."""

    def __init__(self, *, in_channels: int, hidden_dim: int, distill_dim: int, num_logits: int, norm: str):
        super().__init__()
        layers, ch = [], in_channels
        for _ in range(2):
            layers += [Conv2d(ch, hidden_dim, kernel_size=1, bias=False, norm=get_norm(norm, hidden_dim)),
                       nn.ReLU(inplace=True)]
            ch = hidden_dim
        layers.append(Conv2d(ch, distill_dim, kernel_size=1))
        self.mlp = nn.Sequential(*layers)
        self.last_layer = NormalizedLinear(distill_dim, num_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(x), dim=1)

    def logits(self, u: torch.Tensor) -> torch.Tensor:
        """u (..., d_u) -> (..., L)."""
        return self.last_layer(u)
