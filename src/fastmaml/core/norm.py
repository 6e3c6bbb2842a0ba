"""Normalisation layers (and embeddings) from primitive ops, so meta-gradients stay exact under vmap.

PyTorch's fused ``batch_norm`` kernel gives silently wrong second-order gradients when it runs under
``torch.func.vmap`` (functorch issue #534; on a small conv net in float64 we measured a relative
error of 2e-1 after two inner steps). Batch norm written with ``mean``, ``var`` and ``rsqrt`` is exact.
Found later by probing other layers against a per-task reference (float64, 2 inner steps; the loop
is exact for all of them):

- ``layer_norm`` with a learnable scale (``nn.LayerNorm``'s default): second-order meta-gradient off
  by 6e-3 to 9e-3 under vmap (plain torch, without fastmaml: 8e-3);
- ``instance_norm`` with ``affine=True`` (it runs the fused batch-norm kernel underneath): 3e-2;
- ``embedding`` with ``padding_idx``: under vmap the padding row received a (meta-)gradient (norm
  about 2e-2), which PyTorch's ``padding_idx`` promises it never does.

``exact_vmap_ops()`` reroutes every ``torch.nn.functional`` call of these kinds made inside it (what
``nn.BatchNorm*``, ``nn.LayerNorm``, ``nn.InstanceNorm*`` and ``nn.Embedding`` call) to the primitive
versions below, without touching the user's modules. ``MAML`` enters it only around its own vmap
path: in a per-task loop the fused kernels are exact, and faster (measured 1.3-1.5x on the paper's
conv nets, benchmarks/results/bench_cpu_levers.md).

Inside MAML, batch norm always normalises with the statistics of the batch it sees (one task's
support or query set), as the paper's code did, and running statistics are never updated: a pure
function cannot mutate buffers, and per-task statistics are what adaptation is meant to use. In the
per-task loop, where the fused kernels would update them in place, ``nn.BatchNorm*`` gets None for
them, ``nn.InstanceNorm*`` copies, and a layer of the user's own that passes its buffers to
``F.batch_norm`` or ``F.instance_norm`` copies through :class:`frozen_running_stats`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode


def _normalise(
    input: Tensor, dims: tuple[int, ...], weight: Tensor | None, bias: Tensor | None, eps: float,
    shape: list[int] | None = None, stats: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """(input - mean) / sqrt(var + eps) over ``dims`` (or with the given ``stats``), then weight and
    bias viewed as ``shape`` (None: as they are)."""
    if stats is None:
        stats = input.mean(dims, keepdim=True), input.var(dims, unbiased=False, keepdim=True)
    mean, var = stats
    out = (input - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        out = out * (weight if shape is None else weight.view(shape))
    if bias is not None:
        out = out + (bias if shape is None else bias.view(shape))
    return out


def primitive_batch_norm(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch norm over all dims but the channel dim (dim 1), as ``F.batch_norm``: batch statistics,
    or with ``training=False`` the running statistics given. MAML passes none for ``nn.BatchNorm*``
    layers (batch statistics, see the module docstring); a user's own layer calling
    ``F.batch_norm(x, mean, var, training=False)`` (fixed statistics) gets them, as in the loop."""
    del momentum  # running statistics are never updated here (see the module docstring)
    if training and input.dim() >= 2 and input.shape[0] * input.shape[2:].numel() == 1:
        # F.batch_norm's own check, which this reroute bypasses: one value per channel normalises to 0
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.size()}")
    shape = [1, -1] + [1] * (input.dim() - 2)
    stats = None
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var must be defined when training is False")
        stats = (running_mean.view(shape), running_var.view(shape))
    return _normalise(input, (0, *range(2, input.dim())), weight, bias, eps, shape, stats)


def primitive_layer_norm(
    input: Tensor,
    normalized_shape: list[int] | tuple[int, ...],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Layer norm over the last ``len(normalized_shape)`` dims, as ``F.layer_norm``."""
    return _normalise(input, tuple(range(-len(normalized_shape), 0)), weight, bias, eps)


def primitive_instance_norm(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Instance norm (per example and channel, over the spatial dims), as ``F.instance_norm``; with
    ``use_input_stats=False`` (an eval-mode layer tracking running statistics) it uses those."""
    del momentum  # running statistics are never updated here (see the module docstring)
    if use_input_stats and input.dim() >= 2 and input.shape[2:].numel() == 1:
        # F.instance_norm's own check, which this reroute bypasses: one spatial element normalises to 0
        raise ValueError(f"Expected more than 1 spatial element when training, got input size {input.size()}")
    shape = [1, -1] + [1] * (input.dim() - 2)
    if not use_input_stats and (running_mean is None or running_var is None):
        raise ValueError("Expected running_mean and running_var to be defined when use_input_stats is false")
    stats = None if use_input_stats else (running_mean.view(shape), running_var.view(shape))
    return _normalise(input, tuple(range(2, input.dim())), weight, bias, eps, shape, stats)


def primitive_embedding(input: Tensor, weight: Tensor, padding_idx: int | None = None) -> Tensor:
    """``F.embedding`` whose padding row gets no gradient under vmap too: the rows are gathered by
    indexing and the padding positions' values are detached (the forward value is unchanged)."""
    # index_select, not weight[input]: a negative index is an error, as in F.embedding
    out = weight.index_select(0, input.reshape(-1)).view(*input.shape, weight.shape[-1])
    if padding_idx is None:
        return out
    if not -weight.shape[0] <= padding_idx < weight.shape[0]:
        raise ValueError("Padding_idx must be within num_embeddings")
    padding_idx = padding_idx + weight.shape[0] if padding_idx < 0 else padding_idx
    return torch.where((input == padding_idx).unsqueeze(-1), out.detach(), out)


_EMBEDDING_ARGS = ("input", "weight", "padding_idx", "max_norm", "norm_type", "scale_grad_by_freq", "sparse")


class exact_vmap_ops(TorchFunctionMode):
    """Context manager: inside it, ``F.batch_norm``, ``F.layer_norm``, ``F.instance_norm`` and
    ``F.embedding`` (dense, without ``max_norm``) run as the primitive versions of this module."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            return primitive_batch_norm(*args, **kwargs)
        if func is F.layer_norm:
            return primitive_layer_norm(*args, **kwargs)
        if func is F.instance_norm:
            return primitive_instance_norm(*args, **kwargs)
        if func is F.embedding:
            bound = {**dict(zip(_EMBEDDING_ARGS, args)), **kwargs}
            # dense, no max_norm (it renormalises the weight in place), no gradient scaling: as the
            # primitive version computes it; anything else runs as it is
            if bound.get("max_norm") is None and not bound.get("scale_grad_by_freq") and not bound.get("sparse"):
                return primitive_embedding(bound["input"], bound["weight"], bound.get("padding_idx"))
        return func(*args, **kwargs)


_RUNNING_STATS_ARGS = {  # each function's arguments, and the flag (with its default) that updates the statistics
    F.batch_norm: (("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
                   "training", False),
    F.instance_norm: (("input", "running_mean", "running_var", "weight", "bias", "use_input_stats", "momentum", "eps"),
                      "use_input_stats", True),
}


class frozen_running_stats(TorchFunctionMode):
    """Context manager for the per-task loop: ``F.batch_norm`` (training) and ``F.instance_norm``
    (input statistics) called with running statistics get copies of them, so their fused kernels do
    not update a layer's buffers in place, as under vmap (where the primitive versions above ignore
    them). ``nn.BatchNorm*`` and ``nn.InstanceNorm*`` are handled without it (MAML passes None or
    copies); a layer of the user's own that calls these functions with its buffers needs it."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RUNNING_STATS_ARGS:
            names, flag, default = _RUNNING_STATS_ARGS[func]
            bound = {**dict(zip(names, args)), **kwargs}
            if bound.get(flag, default):
                for key in ("running_mean", "running_var"):
                    if isinstance(bound.get(key), Tensor):
                        bound[key] = bound[key].clone()
            return func(**bound)
        return func(*args, **kwargs)


def has_own_buffers(model: nn.Module) -> bool:
    """Whether a submodule of a class of the user's own (not from ``torch.nn``, nor marked
    ``exact_under_vmap``) holds a floating-point buffer: a layer that may pass it to ``F.batch_norm``
    as running statistics (:class:`frozen_running_stats`)."""
    return any(
        not type(m).__module__.startswith("torch.nn.") and not getattr(type(m), "exact_under_vmap", False)
        and any(b is not None and b.is_floating_point() for b in m._buffers.values())
        for m in model.modules()
    )


def needs_exact_vmap_ops(model: nn.Module) -> bool:
    """Whether MAML's vmap path must run ``model`` inside :class:`exact_vmap_ops`: True if a submodule
    is batch norm, layer norm with a learnable scale or shift, affine instance norm or an embedding
    with ``padding_idx``, and also for any submodule class of the user's own (not from ``torch.nn``),
    whose forward may call those functions directly, unless the class says it does not with a class
    attribute ``exact_under_vmap = True`` (fastmaml's own models do). The reroute costs about 3% of a
    vmapped step on the sinusoid MLP (2.30 -> 2.37 ms, one thread), so plain ``torch.nn`` models
    that need none of it run without."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return True
        if isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            return True
        if isinstance(m, nn.modules.instancenorm._InstanceNorm) and m.affine:
            return True
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            return True
        if not type(m).__module__.startswith("torch.nn.") and not getattr(type(m), "exact_under_vmap", False):
            return True
    return False
