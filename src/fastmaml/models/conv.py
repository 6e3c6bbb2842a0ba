"""The paper's few-shot classifiers (Finn et al. 2017, Sec. 5.2), following cbfinn/maml ``maml.py``/``utils.py``.

``ConvNet``: ``blocks`` x [3x3 conv with ``hidden`` filters, batch norm, ReLU], then a linear layer.

- Omniglot (``max_pool=False``, 64 filters): every conv has stride 2 and TensorFlow ``'SAME'``
  padding, which puts the odd padding pixel at the bottom/right (28 -> 14 -> 7 -> 4 -> 2); that
  asymmetry is reproduced. The last feature map is averaged over space
  (``tf.reduce_mean(hidden4, [1, 2])``), so the linear layer sees ``hidden`` features.
- MiniImagenet (``max_pool=True``, 32 filters): stride-1 ``'SAME'`` conv, then 2x2 max-pool with
  ``'VALID'`` padding after the ReLU (84 -> 42 -> 21 -> 10 -> 5); the map is flattened
  (32 * 5 * 5 = 800 features).

Batch norm normalises with the statistics of the batch it sees (``track_running_stats=False``), as
the original did. Initialisation as the original: Glorot-uniform conv weights, zero biases, and a
Glorot-uniform (MiniImagenet) or N(0, 1) (Omniglot, ``tf.random_normal``) linear layer.
Batch norm, ``norm="affine"`` (the default): the usual affine ``nn.BatchNorm2d``, scale and offset
adapted like every other parameter. ``norm="original"``: as the original, whose
``tf.contrib.layers.batch_norm`` had no scale (``scale=False``), eps 1e-3, and an offset that is
meta-learned but not adapted in the inner loop (a TensorFlow variable outside the ``weights`` dict
the inner step updates): batch norm without affine parameters, then an :class:`Offset`, whose
parameters :func:`norm_offsets` names for ``MAML(inner_params=...)`` to leave out.

``NoConvMLP``: the paper's non-convolutional baseline, ``784 -> 256 -> 128 -> 64 -> 64 -> ways``,
each hidden layer linear, batch norm (``norm`` as above), ReLU; weights from a normal with std 0.01 truncated at two
std (``tf.truncated_normal``), zero biases.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fastmaml.errors import ConfigError
from fastmaml.models.mlp import MLP

KERNEL = 3
NORMS = ("affine", "original")


class Offset(nn.Module):
    """A learned per-channel offset added to (N, C, ...) inputs: the original batch norm's beta."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias.view(1, -1, *([1] * (x.dim() - 2)))


def batch_norm(channels: int, norm: str, dims: int) -> list[nn.Module]:
    """Batch norm on batch statistics, ``norm="affine"`` (torch's) or ``"original"`` (see above)."""
    cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    if norm == "affine":
        return [cls(channels, track_running_stats=False)]
    if norm == "original":
        return [cls(channels, eps=1e-3, affine=False, track_running_stats=False), Offset(channels)]
    raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")


def norm_offsets(model: nn.Module) -> list[str]:
    """The names of ``model``'s :class:`Offset` parameters (``norm="original"``): meta-learned only."""
    return [f"{name}.bias" for name, m in model.named_modules() if isinstance(m, Offset)]


def same_padding(size: int, stride: int, kernel: int = KERNEL) -> tuple[int, int]:
    """TensorFlow's ``'SAME'`` padding (before, after) of one spatial dim: the output is ceil(size / stride)."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class ConvNet(nn.Module):
    """The paper's 4-block conv net: strided (Omniglot) or max-pooled (``max_pool=True``, MiniImagenet)."""

    exact_under_vmap = True  # its forward calls only torch.nn modules (fastmaml.core.norm.needs_exact_vmap_ops)

    def __init__(
        self,
        in_channels: int,
        ways: int,
        hidden: int = 64,
        blocks: int = 4,
        image_size: int = 28,
        max_pool: bool = False,
        norm: str = "affine",
    ) -> None:
        super().__init__()
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
            raise ConfigError(f"blocks must be an integer >= 1, got {blocks!r}")
        stride, size, layers = (1 if max_pool else 2), image_size, []
        for block in range(blocks):
            before, after = same_padding(size, stride)
            layers += [
                nn.ZeroPad2d((before, after, before, after)),
                nn.Conv2d(in_channels if block == 0 else hidden, hidden, KERNEL, stride),
                *batch_norm(hidden, norm, 2),
                nn.ReLU(),
            ]
            size = -(-size // stride)
            if max_pool:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            if size < 1:
                raise ConfigError(f"image_size={image_size} is too small for {blocks} max-pooled blocks; use "
                                  f"image_size >= {2 ** blocks} (or, in Python, ConvNet(blocks=...) with fewer)")
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(hidden * size * size if max_pool else hidden, ways)
        self.image_size, self.max_pool = image_size, max_pool
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        if max_pool:
            nn.init.xavier_uniform_(self.head.weight)
        else:
            nn.init.normal_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, ways)
        return self.forward_head(self.forward_features(x))

    # forward = forward_head(forward_features(x)) (timm's names): MAML adapting the head alone
    # (inner_params=["head"], ANIL) computes the features once per task instead of at every inner step
    def forward_features(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, features)
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ConfigError(
                f"ConvNet was built for {self.image_size}x{self.image_size} images, got "
                f"{tuple(x.shape[-2:])}; "
                + (f"build it with image_size={x.shape[-1]}" if x.shape[-1] == x.shape[-2] else
                   "it takes square images: resize them to one side")
            )
        h = self.features(x)
        return h.flatten(1) if self.max_pool else h.mean((2, 3))

    def forward_head(self, z: Tensor) -> Tensor:  # (N, features) -> (N, ways)
        return self.head(z)


class NoConvMLP(nn.Module):
    """The paper's non-convolutional Omniglot network: flattened image -> hidden (BN, ReLU) -> ways."""

    exact_under_vmap = True  # its forward calls only torch.nn modules (fastmaml.core.norm.needs_exact_vmap_ops)

    def __init__(
        self, in_features: int, ways: int, hidden: Sequence[int] = (256, 128, 64, 64), norm: str = "affine"
    ) -> None:
        super().__init__()
        layers, width = [], in_features
        for out in hidden:
            layers += [nn.Linear(width, out), *batch_norm(out, norm, 1), nn.ReLU()]
            width = out
        layers.append(nn.Linear(width, ways))
        self.net = nn.Sequential(*layers)
        self.in_features = in_features
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.01, a=-0.02, b=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:  # (N, ...) -> (N, ways)
        return self.forward_head(self.forward_features(x))

    def forward_features(self, x: Tensor) -> Tensor:  # (N, ...) -> (N, last hidden width); see ConvNet
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise ConfigError(f"NoConvMLP expects {self.in_features} input features, got {x.shape[1]}")
        for layer in list(self.net)[:-1]:  # not net[:-1]: no new Sequential per call
            x = layer(x)
        return x

    def forward_head(self, z: Tensor) -> Tensor:  # the last linear layer
        return self.net[-1](z)

    head_name = MLP.head_name  # its last layer, net.N, which inner_params="head" means (as ConvNet's head)
