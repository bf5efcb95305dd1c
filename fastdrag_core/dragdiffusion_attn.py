"""DragDiffusion's reference-latent control ("latent-MasaCtrl") as a pure K/V policy (no ComfyUI import).

While sampling, the unedited inverted latent (the *reference*) and the optimised latent (the
*edited* one) are denoised side by side in one batch. In the self-attention of the controlled
transformer blocks the edited branch's queries attend to the reference branch's keys and values;
the reference branch attends to itself; everything else (cross-attention, other blocks, other
steps) is untouched. Official: ``utils/attn_utils.py::MutualSelfAttentionControl`` with
``start_step=0, start_layer=10`` on SD1.5's 16 transformer blocks counted in call order
(``cur_att_layer // 2``: every block has a self- and a cross-attention).

Batch layout the policy expects (what the ComfyUI glue builds): the sampled latent batch is
``[reference_1..n, edited_1..n]``, and a model call may stack several cond/uncond chunks of that
batch: ``[chunk_0: ref, edit][chunk_1: ref, edit]...``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["ReferenceAttention"]


@dataclass(frozen=True)
class ReferenceAttention:
    """Which self-attention calls use the reference branch's K/V, and the K/V they use.

    Attributes:
        start_layer: first controlled transformer block, counted over the whole UNet in call order
            (input blocks, middle, output blocks; SD1.5 has 16, so 10 = the last six, diffusers'
            ``up_blocks[2]`` and ``up_blocks[3]``).
        start_step: first controlled denoising step (0 = the first step, at the edit timestep).
        num_layers: blocks the UNet has (None = unbounded); the official ``layer_idx`` is
            ``range(start_layer, 16)``.
    """

    start_layer: int = 10
    start_step: int = 0
    num_layers: Optional[int] = None

    def __post_init__(self):
        if self.start_layer < 0 or self.start_step < 0:
            raise ValueError(f"start_layer and start_step must be >= 0, got {self.start_layer}, {self.start_step}")

    def controlled_layers(self, num_layers: int) -> range:
        return range(min(self.start_layer, num_layers), num_layers)

    def controls(self, layer: int, step: Optional[int]) -> bool:
        """True when block ``layer`` at denoising step ``step`` (None = unknown) is controlled."""
        if step is None or step < self.start_step or layer < self.start_layer:
            return False
        return self.num_layers is None or layer < self.num_layers

    def select(self, k: torch.Tensor, v: torch.Tensor, n_chunks: int, layer: int,
               step: Optional[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V for one self-attention call.

        Args:
            k, v: [B_total, tokens, channels]; B_total = n_chunks x 2n in the layout above.
            n_chunks: cond/uncond chunks stacked in this call (ComfyUI's ``len(cond_or_uncond)``).
        Returns:
            (k, v) of the same shape: unchanged when the call is not controlled, else every chunk's
            edited half replaced by its reference half.
        """
        if not self.controls(layer, step):
            return k, v
        total = k.shape[0]
        if n_chunks < 1 or total % (2 * n_chunks) or v.shape[0] != total:
            raise ValueError(f"reference attention needs a [reference, edited] batch per chunk: got K batch "
                             f"{total}, V batch {v.shape[0]} for {n_chunks} chunk(s)")
        n = total // (2 * n_chunks)

        def from_reference(t: torch.Tensor) -> torch.Tensor:
            halves = t.reshape(n_chunks, 2, n, *t.shape[1:])
            return halves[:, :1].expand_as(halves).reshape(t.shape)

        return from_reference(k), from_reference(v)
