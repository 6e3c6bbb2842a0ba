"""The paper's networks, as plain ``nn.Module``s."""

from fastmaml.models.conv import ConvNet, NoConvMLP
from fastmaml.models.mlp import MLP

__all__ = ["MLP", "ConvNet", "NoConvMLP"]
