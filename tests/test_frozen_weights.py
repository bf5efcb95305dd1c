"""fastdrag_core.frozen_weights: ComfyUI's inference-mode weights used as frozen constants of a gradient
w.r.t. the input, with no weight copied and the module handed back as found."""

import pytest
import torch
from torch.nn import Conv2d, Linear  # plain layers: the unit tests' small models (no comfy.ops here)

from fastdrag_core.frozen_weights import frozen_parameters, ordinary_alias


def inference_module(**flags):
    """A conv + linear module built under inference mode: its parameters are inference tensors that
    require grad, as ComfyUI's loaded UNet weights."""
    torch.manual_seed(0)
    with torch.inference_mode():
        m = torch.nn.Sequential(Conv2d(3, 4, 3, padding=1), torch.nn.Flatten(), Linear(4 * 5 * 5, 2))
    assert all(p.is_inference() and p.requires_grad for p in m.parameters())
    return m


def test_alias_shares_memory_and_is_an_ordinary_tensor():
    with torch.inference_mode():
        w = torch.arange(12.0).reshape(3, 4)[:, 1:]  # a view with an offset and strides
    a = ordinary_alias(w)
    assert not a.is_inference() and not a.requires_grad
    assert a.data_ptr() == w.data_ptr() and a.stride() == w.stride() and torch.equal(a, w)


def test_gradient_wrt_input_without_copying_a_weight():
    m = inference_module()
    before = [(p, p.data_ptr()) for p in m.parameters()]
    x = torch.randn(2, 3, 5, 5)
    with pytest.raises(RuntimeError, match="Inference tensors cannot be saved"):
        m(x.clone().requires_grad_(True)).square().sum().backward()
    with frozen_parameters(m) as info:
        inside = list(m.parameters())
        assert all(not p.is_inference() and not p.requires_grad for p in inside)
        assert [p.data_ptr() for p in inside] == [ptr for _, ptr in before]  # the same memory: no copy
        xg = x.clone().requires_grad_(True)
        m(xg).square().sum().backward()
    assert (info.total, info.aliased, info.copied_bytes, info.requires_grad) == (4, 4, 0, 0)
    # the reference: the same network with ordinary weight copies
    ref = torch.nn.Sequential(Conv2d(3, 4, 3, padding=1), torch.nn.Flatten(), Linear(100, 2))
    with torch.no_grad():
        for q, (p, _) in zip(ref.parameters(), before):
            q.copy_(p)
    xr = x.clone().requires_grad_(True)
    ref(xr).square().sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad)
    # handed back: the same Parameter objects, flags unchanged, no .grad
    assert all(p is q and p.is_inference() and p.requires_grad and p.grad is None
               for p, (q, _) in zip(m.parameters(), before))


def test_ordinary_weights_that_require_grad_get_no_gradient():
    """After a GPU load outside inference mode ComfyUI's weights are ordinary and require grad."""
    m = Linear(3, 2)
    ptrs = [p.data_ptr() for p in m.parameters()]
    with frozen_parameters(m) as info:
        assert [p.data_ptr() for p in m.parameters()] == ptrs and info.requires_grad == 0
        x = torch.randn(4, 3, requires_grad=True)
        m(x).sum().backward()
    assert x.grad is not None and all(p.grad is None and p.requires_grad for p in m.parameters())


def test_restored_after_an_error():
    m = inference_module()
    params = list(m.parameters())
    with pytest.raises(KeyError):
        with frozen_parameters(m):
            raise KeyError("interrupted")
    assert all(p is q for p, q in zip(m.parameters(), params))
