"""fastdrag_core.dit_kv: image-token K/V of joint attention (Flux.1, SD3.x), hand-worked cases."""

import pytest
import torch

from fastdrag_core.dit_kv import DiTKVKeep, capture, inject, store_bytes
from fastdrag_core.kv import InjectionStats, KVStore

FLUX_LAYERS = [("double_block", i) for i in range(19)] + [("single_block", i) for i in range(38)]


def test_kept_layers():
    assert DiTKVKeep().option == "v_last_third" and not DiTKVKeep().keeps_k
    kept = DiTKVKeep().layers(FLUX_LAYERS)
    assert kept == [("single_block", i) for i in range(19, 38)]  # 19 of 57
    assert DiTKVKeep("kv_all").layers(FLUX_LAYERS) == FLUX_LAYERS and DiTKVKeep("kv_all").keeps_k
    assert len(DiTKVKeep("v_all").layers(FLUX_LAYERS)) == 57
    assert len(DiTKVKeep("kv_last_third").layers(list(range(38)))) == 13  # SD3.5 Large: ceil(38 / 3)
    assert DiTKVKeep().layers([("double_block", 0), ("single_block", 0)]) == [("single_block", 0)]
    with pytest.raises(ValueError, match="unknown K/V setting 'k_only'"):
        DiTKVKeep("k_only")


def joint(n_txt, n_img, value, flux=True):
    """A joint-attention tensor whose text tokens hold -1 and image token i holds value + i."""
    tok = torch.cat([torch.full((n_txt,), -1.0), value + torch.arange(n_img, dtype=torch.float32)])
    if flux:  # [B, heads, tokens, dim]
        return tok.view(1, 1, -1, 1).expand(1, 2, -1, 3).clone()
    return tok.view(1, -1, 1).expand(1, -1, 6).clone()  # SD3: [B, tokens, heads*dim]


@pytest.mark.parametrize("flux", [True, False])
def test_capture_stores_only_image_tokens_and_inject_replaces_only_them(flux):
    dim = 2 if flux else 1
    store = KVStore()
    k, v = joint(3, 4, 10.0, flux), joint(3, 4, 20.0, flux)
    capture(store, ("single_block", 5), 2, [0], k, v, txt_len=3, token_dim=dim, keep_k=False)
    store.freeze()
    sk, sv = store.get(("single_block", 5), 2, 0)
    assert sk.numel() == 0 and sv.dtype == torch.float16
    assert sv.shape[dim] == 4 and torch.equal(sv.float().select(dim, 0), torch.full_like(sv.float().select(dim, 0), 20.0))
    # sampling: another pass with other text (-1 stays -1: its own) and other image values
    k2, v2 = joint(3, 4, 100.0, flux), joint(3, 4, 200.0, flux)
    k2[..., 0] += 0.5  # mark the call's own K
    stats = InjectionStats()
    nk, nv = inject(store, ("single_block", 5), 2, [0], k2, v2, txt_len=3, token_dim=dim, stats=stats)
    assert torch.equal(nk, k2)  # K not kept: the call's own
    assert torch.equal(nv.narrow(dim, 0, 3), v2.narrow(dim, 0, 3))  # text tokens from the current pass
    assert torch.equal(nv.narrow(dim, 3, 4), v.narrow(dim, 3, 4))  # image tokens from the inversion
    assert (stats.hits, stats.misses, stats.fallbacks) == (1, 0, 0)


def test_k_and_v_kept_and_chunks():
    store = KVStore()
    k, v = joint(2, 3, 1.0).repeat(2, 1, 1, 1), joint(2, 3, 5.0).repeat(2, 1, 1, 1)
    k[1] += 50
    capture(store, ("double_block", 0), 7, [0, 1], k, v, txt_len=2, token_dim=2, keep_k=True)
    store.freeze()
    assert len(store) == 2 and torch.equal(store.get(("double_block", 0), 7, 1)[0].float(), k[1:, :, 2:])
    stats = InjectionStats()
    nk, nv = inject(store, ("double_block", 0), 7, [1, 0], torch.zeros_like(k), torch.zeros_like(v), 2, 2, stats)
    assert torch.equal(nk[0, :, 2:], k[1, :, 2:]) and torch.equal(nk[1, :, 2:], k[0, :, 2:])  # by chunk id
    assert torch.equal(nk[:, :, :2], torch.zeros_like(nk[:, :, :2]))
    # an uncond chunk with a store captured at cfg 1: the cond entry; a missing step: own K/V, counted
    store1 = KVStore()
    capture(store1, "L", 3, [0], k[:1], v[:1], 2, 2, keep_k=True)
    stats = InjectionStats()
    nk, _ = inject(store1, "L", 3, [0, 1], torch.zeros_like(k), torch.zeros_like(v), 2, 2, stats)
    assert torch.equal(nk[1, :, 2:], k[0, :, 2:]) and (stats.hits, stats.fallbacks) == (1, 1)
    nk, _ = inject(store1, "L", 4, [0], torch.zeros_like(k[:1]), torch.zeros_like(v[:1]), 2, 2, stats)
    assert stats.misses == 1 and stats.missed_keys == [("L", 4, 0)] and not nk.any()


def test_other_resolution_is_refused():
    store = KVStore()
    capture(store, "L", 1, [0], joint(2, 4, 0.0), joint(2, 4, 0.0), 2, 2, keep_k=False)
    with pytest.raises(ValueError, match="another resolution or prompt length"):
        inject(store, "L", 1, [0], joint(2, 6, 0.0), joint(2, 6, 0.0), 2, 2, InjectionStats())


def test_store_bytes_at_1024():
    """Flux.1 at 1024x1024: 4096 image tokens x 3072 channels x 2 bytes = 24 MiB per tensor and layer."""
    per = 4096 * 3072 * 2
    assert per == 24 * 2 ** 20
    assert store_bytes(4096, 3072, 57, 7, keep_k=True) == per * 2 * 57 * 7  # everything: 18.7 GiB
    assert store_bytes(4096, 3072, 19, 7, keep_k=False) == per * 19 * 7 == 3192 * 2 ** 20  # default: 3.1 GiB
    assert store_bytes(4096, 3072, 19, 1, keep_k=False) == 456 * 2 ** 20  # per step
    assert store_bytes(4096, 3072, 19, 7, keep_k=False, chunks=2) == 2 * 3192 * 2 ** 20  # cfg != 1
