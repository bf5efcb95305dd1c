"""A network's weights as frozen, ordinary tensors for a gradient w.r.t. something else, without a copy.

ComfyUI loads its models under ``torch.inference_mode()``: the weights are *inference tensors*, which
autograd refuses to save for a backward pass, and ``Parameter``s with ``requires_grad=True`` (so that a
graph through them would also differentiate, and save inputs for, every weight). The pack's two gradient
loops (DragDiffusion's latent optimisation and the identity LoRA) need d loss / d input only, with the
weights as constants W.

:func:`frozen_parameters` gives every parameter of a module, for the duration of a ``with`` block, a
stand-in ``Parameter`` that (a) is an ordinary tensor, (b) does not require grad and (c) shares the
original's memory: an inference tensor is re-wrapped outside inference mode with ``Tensor.set_`` on its
storage (a new tensor header, the same bytes), an ordinary one is detached. No weight byte is copied;
the originals are put back on exit, on every path out (error, interrupt).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

__all__ = ["FrozenWeights", "ordinary_alias", "frozen_parameters"]


def ordinary_alias(t: torch.Tensor) -> torch.Tensor:
    """A tensor on ``t``'s memory (same storage, offset, shape, strides) that is not an inference tensor
    and does not require grad. Raises RuntimeError for tensors without a plain storage (e.g. tensor
    subclasses that refuse ``set_``)."""
    with torch.inference_mode(False):
        if not t.is_inference():
            return t.detach()
        alias = torch.empty(0, dtype=t.dtype, device=t.device)
        alias.set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())
        return alias


@dataclass
class FrozenWeights:
    """What :func:`frozen_parameters` did: ``total`` parameters, ``aliased`` given a stand-in on the same
    memory, ``copied_bytes`` of weights that could only be cloned (0 for ordinary dense weights), and
    ``requires_grad``: parameters still requiring grad inside the block (0)."""

    total: int = 0
    aliased: int = 0
    copied_bytes: int = 0
    requires_grad: int = 0


@contextlib.contextmanager
def frozen_parameters(module: torch.nn.Module):
    """Every parameter of ``module`` as a frozen ordinary tensor on the same memory inside the block
    (see the module docstring); the original ``Parameter`` objects are restored on exit. A parameter
    that is already ordinary and frozen is left as it is. Yields a :class:`FrozenWeights`."""
    swapped = []
    info = FrozenWeights()
    try:
        with torch.inference_mode(False):
            for mod in module.modules():
                for name, p in list(mod._parameters.items()):
                    if p is None:
                        continue
                    info.total += 1
                    if not p.is_inference() and not p.requires_grad:
                        continue
                    try:
                        data = ordinary_alias(p)
                        info.aliased += 1
                    except RuntimeError:  # no plain storage to share: one copy for this block only
                        data = p.detach().clone()
                        info.copied_bytes += p.numel() * p.element_size()
                    mod._parameters[name] = torch.nn.Parameter(data, requires_grad=False)
                    swapped.append((mod, name, p))
        info.requires_grad = sum(p.requires_grad for p in module.parameters())
        yield info
    finally:
        for mod, name, p in swapped:
            mod._parameters[name] = p
