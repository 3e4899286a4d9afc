"""What a window costs, known before it is run: MACs and an activation-memory bound.

Both are measured by running the model on PyTorch's ``meta`` device, where
tensors have shapes but no storage: exact for any window size in milliseconds,
with no real memory touched.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode


class _AllocationCounter(TorchDispatchMode):
    """Sums the bytes of every new tensor an op returns (views and in-place ops excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view and not func._schema.is_mutable:
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.bytes += t.numel() * t.element_size()
        return out


def window_cost(model: nn.Module, input_shapes: tuple[tuple[int, ...], ...]) -> dict[str, int]:
    """``macs`` and ``activation_bytes`` of one inference pass on inputs of ``input_shapes``.

    ``activation_bytes`` is every tensor the pass allocates plus its inputs, as if
    nothing were freed: an upper bound on what eager PyTorch holds at once (its
    real peak is lower: finished activations are released, skips are not). The
    tiler uses it to cap the windows in flight under a memory budget.
    """
    meta = copy.deepcopy(model).to("meta").eval()
    inputs = [torch.empty(s, device="meta") for s in input_shapes]
    with torch.no_grad(), FlopCounterMode(display=False) as flops, _AllocationCounter() as alloc:
        meta(*inputs)
    in_bytes = sum(x.numel() * x.element_size() for x in inputs)
    return {"macs": flops.get_total_flops() // 2, "activation_bytes": alloc.bytes + in_bytes}


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def window_bytes(model: nn.Module, input_shapes: tuple[tuple[int, ...], ...]) -> int:
    """Activation bytes of one window, cached on the model per window shape."""
    cache = model.__dict__.setdefault("_window_bytes_cache", {})
    if input_shapes not in cache:
        cache[input_shapes] = window_cost(model, input_shapes)["activation_bytes"]
    return cache[input_shapes]
