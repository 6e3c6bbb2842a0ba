"""Sinusoid regression tasks (Finn et al., 2017, section 5.1): y = A sin(x − φ).

The paper samples amplitude A ~ U[0.1, 5.0] and phase φ ~ U[0, π], with x ~ U[−5, 5]. (The
reference slides print A in [0.1, 0.5]; that is a typo against the paper and the original code,
and is one ``--set amplitude=0.1,0.5`` away.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fastmaml.core import TaskBatch


@dataclass(frozen=True)
class SinusoidTasks:
    """A distribution over sinusoid tasks."""

    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, torch.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    def sample_params(self, generator: torch.Generator, num_tasks: int) -> tuple[Tensor, Tensor]:
        """Amplitudes and phases, each shape (T,)."""
        amp = _uniform(generator, (num_tasks,), self.amplitude)
        phase = _uniform(generator, (num_tasks,), self.phase)
        return amp, phase

    def sample_x(self, generator: torch.Generator, num_tasks: int, points: int) -> Tensor:
        return _uniform(generator, (num_tasks, points, 1), self.x_range)  # (T, points, 1)

    def sample(
        self, generator: torch.Generator, num_tasks: int, shots: int, queries: int
    ) -> tuple[TaskBatch, Tensor, Tensor]:
        """``num_tasks`` tasks with ``shots`` support and ``queries`` query points; also (A, φ)."""
        amp, phase = self.sample_params(generator, num_tasks)
        support_x = self.sample_x(generator, num_tasks, shots)
        query_x = self.sample_x(generator, num_tasks, queries)
        batch = TaskBatch(support_x, evaluate(support_x, amp, phase), query_x, evaluate(query_x, amp, phase))
        return batch, amp, phase


def evaluate(x: Tensor, amplitude: Tensor, phase: Tensor) -> Tensor:
    """y = A sin(x − φ) for x (T, N, 1) and per-task A, φ (T,)."""
    return amplitude.view(-1, 1, 1) * torch.sin(x - phase.view(-1, 1, 1))


def _uniform(generator: torch.Generator, shape: tuple[int, ...], bounds: tuple[float, float]) -> Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(shape, generator=generator)
