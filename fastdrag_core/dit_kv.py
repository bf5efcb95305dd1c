"""FastDrag's consistency strategy in the joint attention of flow-matching DiTs (Flux.1, SD3.x).

Pure PyTorch; no ComfyUI import. In a DiT every block attends over one sequence [text tokens, image
tokens]; the UNet decoder's self-attention of the SD path (fastdrag-method.md §4) becomes the image
tokens' part of that joint attention. ComfyUI glue (``nodes/dit_patches.py``) calls, from its attention
override, with the call's K and V and the number of text tokens in front of the image tokens:

* :func:`capture` during the inversion: the image tokens' V (and K when kept) into a
  :class:`fastdrag_core.kv.KVStore` keyed (layer, step label, chunk);
* :func:`inject` while sampling: the same tokens of the call's K / V replaced by the stored ones of the
  same noise level and chunk; the text tokens always come from the current pass.

Which layers and which of K / V are kept is a :class:`DiTKVKeep`. Memory (fp16, one chunk, 1024² =
4096 image tokens): Flux.1 has 57 blocks x 3072 channels, 24 MiB per K or V per block and step, i.e.
2.67 GiB per step and 18.7 GiB for the 7 steps of steps 10 / strength 0.7 with all K and V; the default
(V of the last third of the blocks, 19 of 57) is 456 MiB per step and 3.1 GiB in all
(:func:`store_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Optional, Sequence

import torch

from .kv import InjectionStats, KVStore, lookup

__all__ = ["DiTKVKeep", "KEEP_OPTIONS", "DEFAULT_KEEP", "capture", "inject", "store_bytes", "image_tokens"]

# option -> (fraction of the layers kept, counted from the last one; K kept too)
_KEEP = {"v_last_third": (1 / 3, False), "kv_last_third": (1 / 3, True), "v_all": (1.0, False),
         "kv_all": (1.0, True)}
KEEP_OPTIONS = tuple(_KEEP)
DEFAULT_KEEP = "v_last_third"


@dataclass(frozen=True)
class DiTKVKeep:
    """Which joint-attention layers keep their image tokens' K/V, and whether K is kept besides V.

    ``option``: ``v_last_third`` (default: V only, the last third of the layers in call order; for Flux.1
    single-stream blocks 19-37), ``kv_last_third``, ``v_all``, ``kv_all`` (everything, as FastDrag's UNet
    path keeps every decoder layer's K and V)."""

    option: str = DEFAULT_KEEP

    def __post_init__(self):
        if self.option not in _KEEP:
            raise ValueError(f"unknown K/V setting {self.option!r}; one of {list(_KEEP)}")

    @property
    def keeps_k(self) -> bool:
        return _KEEP[self.option][1]

    def layers(self, all_layers: Sequence[Hashable]) -> list:
        """The kept layers of ``all_layers`` (in the model's call order): the last ceil(fraction x n)."""
        n = len(all_layers)
        fraction = _KEEP[self.option][0]
        keep = n if fraction >= 1.0 else max(1, -(-n // round(1 / fraction)))
        return list(all_layers[n - keep:])


def image_tokens(t: torch.Tensor, txt_len: int, token_dim: int) -> torch.Tensor:
    """The image tokens of a joint-attention tensor: everything after the ``txt_len`` text tokens along
    ``token_dim`` (Flux: [B, heads, tokens, dim], token_dim 2; SD3: [B, tokens, heads*dim], token_dim 1)."""
    return t.narrow(token_dim, txt_len, t.shape[token_dim] - txt_len)


def capture(store: KVStore, layer: Hashable, step: int, chunks: Sequence[int], k: torch.Tensor, v: torch.Tensor,
            txt_len: int, token_dim: int, keep_k: bool) -> int:
    """Store the image tokens' V (and K if ``keep_k``; else an empty [B, 0] K) of one attention call.
    Returns the chunks not stored because their key was already there (see ``KVStore.capture``)."""
    vi = image_tokens(v, txt_len, token_dim)
    ki = image_tokens(k, txt_len, token_dim) if keep_k else vi.new_empty((vi.shape[0], 0))
    return store.capture(layer, step, chunks, ki, vi)


def inject(store: KVStore, layer: Hashable, step: Optional[int], chunks: Sequence[int], k: torch.Tensor,
           v: torch.Tensor, txt_len: int, token_dim: int, stats: InjectionStats,
           uncond_fallback: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of one attention call with their image tokens replaced by the stored ones of
    (``layer``, ``step``, chunk); K is replaced only where it was kept. The text tokens are the call's own.
    A chunk with no entry keeps its own K/V (counted in ``stats.misses``); the uncond chunk of a store
    captured at cfg 1 gets the cond entry (``stats.fallbacks``), as FastDrag's UNet path."""
    stats.calls += 1
    if step is None:
        stats.off += 1
        return k, v
    n = len(chunks)
    ks, vs = [], []
    for c, kk, vv in zip(chunks, k.chunk(n), v.chunk(n)):
        hit = lookup(store, layer, step, c, stats, uncond_fallback)
        if hit is None:
            ks.append(kk)
            vs.append(vv)
            continue
        sk, sv = hit
        vs.append(_replace_image(vv, sv, txt_len, token_dim, layer))
        ks.append(_replace_image(kk, sk, txt_len, token_dim, layer) if sk.numel() else kk)
    return torch.cat(ks), torch.cat(vs)


def _replace_image(own: torch.Tensor, stored: torch.Tensor, txt_len: int, token_dim: int, layer) -> torch.Tensor:
    img = image_tokens(own, txt_len, token_dim)
    if stored.shape[1:] != img.shape[1:]:
        raise ValueError(f"stored K/V of layer {layer} has shape {list(stored.shape)}, the sampled latent gives "
                         f"{list(img.shape)}: K/V from another resolution or prompt length")
    if stored.shape[0] != img.shape[0]:
        if stored.shape[0] != 1:
            raise ValueError(f"stored K/V batch {stored.shape[0]} != sampled batch {img.shape[0]} (layer {layer})")
        stored = stored.expand_as(img)
    out = own.clone()
    image_tokens(out, txt_len, token_dim).copy_(stored.to(device=own.device, dtype=own.dtype))
    return out


def store_bytes(image_tokens_n: int, channels: int, layers: int, steps: int, keep_k: bool, chunks: int = 1,
                batch: int = 1, element_size: int = 2) -> int:
    """Bytes of a DiT K/V store: image tokens x channels x element size, per kept tensor (V, or K and V),
    layer, step, chunk and batch entry. Flux.1 at 1024² (4096 tokens, 3072 channels), 57 layers, K and V,
    7 steps: 20.1e9 bytes (18.7 GiB)."""
    return image_tokens_n * channels * element_size * (2 if keep_k else 1) * layers * steps * chunks * batch
