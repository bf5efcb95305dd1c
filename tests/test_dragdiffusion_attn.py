"""fastdrag_core.dragdiffusion_attn: the reference-latent (mutual self-attention) K/V policy."""

import pytest
import torch
import torch.nn.functional as F

from fastdrag_core.dragdiffusion_attn import ReferenceAttention


def attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v per batch entry, written out (one head)."""
    w = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return w @ v


def labelled(n_chunks, n, tokens=3, ch=2):
    """K with every entry = 10*chunk + (0 reference | 1 edited) + 0.01*image index."""
    rows = []
    for c in range(n_chunks):
        for branch in (0, 1):
            for i in range(n):
                rows.append(torch.full((1, tokens, ch), 10.0 * c + branch + 0.01 * i))
    k = torch.cat(rows)
    return k, -k


@pytest.mark.parametrize("n_chunks,n", [(1, 1), (2, 1), (2, 3)])
def test_edited_half_gets_the_reference_kv_per_chunk(n_chunks, n):
    k, v = labelled(n_chunks, n)
    pol = ReferenceAttention(start_layer=10)
    k2, v2 = pol.select(k, v, n_chunks, layer=12, step=0)
    assert k2.shape == k.shape and v2.shape == v.shape
    for c in range(n_chunks):
        for branch in (0, 1):
            for i in range(n):
                row = c * 2 * n + branch * n + i
                assert float(k2[row, 0, 0]) == pytest.approx(10.0 * c + 0.01 * i)  # always the reference
                assert float(v2[row, 0, 0]) == pytest.approx(-(10.0 * c + 0.01 * i))


def test_layers_and_steps_outside_the_control_are_untouched():
    k, v = labelled(2, 1)
    pol = ReferenceAttention(start_layer=10, start_step=3, num_layers=16)
    for layer, step in [(9, 5), (10, 2), (16, 5), (12, None)]:
        k2, v2 = pol.select(k, v, 2, layer, step)
        assert k2 is k and v2 is v
    assert pol.controls(10, 3) and pol.controls(15, 34) and not pol.controls(16, 3)
    assert list(pol.controlled_layers(16)) == [10, 11, 12, 13, 14, 15]
    assert list(ReferenceAttention(start_layer=20).controlled_layers(16)) == []


def test_matches_the_official_concatenated_query_formulation():
    """MasaCtrl concatenates the two branches' queries and attends once to the reference K/V;
    with the policy's K/V, per-entry attention gives the same output."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 5, 4, generator=g) for _ in range(3))  # [ref, edit], 5 tokens, dim 4
    k2, v2 = ReferenceAttention().select(k, v, 1, layer=10, step=0)
    ours = attention(q, k2, v2)
    q_cat = torch.cat([q[0:1], q[1:2]], dim=1)  # official: torch.cat([q[0:1], q[1:2]], dim=2) over heads
    official = F.scaled_dot_product_attention(q_cat[:, None], k[0:1, None], v[0:1, None])[:, 0]
    official = torch.cat(official.chunk(2, dim=1), dim=0)
    torch.testing.assert_close(ours, official, rtol=1e-5, atol=1e-6)
    # the reference branch attends to itself: unchanged by the control
    torch.testing.assert_close(ours[0], attention(q, k, v)[0])


def test_identical_branches_are_unchanged():
    """reference == edited: replacing the edited K/V by the reference's changes nothing."""
    g = torch.Generator().manual_seed(1)
    k1 = torch.randn(1, 6, 8, generator=g)
    k = torch.cat([k1, k1, k1 + 1, k1 + 1])  # two chunks, each [ref, edit] identical
    k2, v2 = ReferenceAttention(start_layer=0).select(k, -k, 2, 0, 0)
    assert torch.equal(k2, k) and torch.equal(v2, -k)


def test_bad_layouts_are_refused():
    k = torch.zeros(3, 4, 2)
    with pytest.raises(ValueError, match=r"\[reference, edited\] batch"):
        ReferenceAttention().select(k, k, 1, 10, 0)
    with pytest.raises(ValueError, match="start_layer"):
        ReferenceAttention(start_layer=-1)
