"""Fully connected networks: the paper's sinusoid regressor (1-40-40-1 ReLU) and friends."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from fastmaml.errors import ConfigError

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


def check_activation(activation: str) -> None:
    """ConfigError unless ``activation`` names one of ACTIVATIONS (checked with the config, before a run
    folder is made)."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"activation must be one of {', '.join(sorted(ACTIVATIONS))}, got {activation!r}; "
                          "set e.g. --set activation=relu")


class MLP(nn.Module):
    """``in_features -> hidden... -> out_features`` with one activation between layers."""

    exact_under_vmap = True  # its forward calls only torch.nn modules (fastmaml.core.norm.needs_exact_vmap_ops)

    def __init__(
        self, in_features: int, out_features: int, hidden: Sequence[int] = (40, 40), activation: str = "relu"
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        sizes = [in_features, *hidden, out_features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    # forward = forward_head(forward_features(x)): MAML adapting the last layer alone (ANIL) computes
    # the hidden features once per task instead of at every inner step
    def forward_features(self, x: Tensor) -> Tensor:
        for layer in list(self.net)[:-1]:  # not net[:-1]: no new Sequential per call
            x = layer(x)
        return x

    def forward_head(self, z: Tensor) -> Tensor:
        return self.net[-1](z)

    @property
    def head_name(self) -> str:
        """The last layer's name, which ``inner_params="head"`` means (the conv nets call theirs ``head``)."""
        return f"net.{len(self.net) - 1}"
