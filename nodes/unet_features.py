"""UNet decoder features by diffusers' ``up_blocks`` index, read through ComfyUI's patch point.

DragDiffusion (motion supervision on ``up_blocks[2]``) and DIFT (DragBench's MD metric, on
``up_blocks[1]``) name decoder features by diffusers' up-block index. ComfyUI's UNet has a flat
``output_blocks`` list instead: up level ``i`` (``i = 0`` the deepest) is the
``num_res_blocks[L-1-i] + 1`` consecutive output blocks of decoder level ``L-1-i``, its last block
ending with the upsampler (SD1.5: ``up_blocks[1]`` = output blocks 3-5, ``up_blocks[2]`` = 6-8).

The output of up level ``i`` is the ``h`` that enters the first output block of level ``i + 1``;
the ``output_block_patch`` (``ModelPatcher.set_model_output_block_patch``) sees exactly that ``h``
before the skip concatenation, so :class:`DecoderFeatureTap` records it there: no forward hook on
shared modules, no copy of the UNet, and gradients flow through it when the caller wants them.
"""

from __future__ import annotations


def up_level_blocks(diffusion_model) -> list[range]:
    """``output_blocks`` indices of each diffusers up level, deepest first (``[up_blocks[0], ...]``)."""
    num_res = getattr(diffusion_model, "num_res_blocks", None)
    blocks = getattr(diffusion_model, "output_blocks", None)
    if num_res is None or blocks is None:
        raise ValueError(f"{type(diffusion_model).__name__} is not a UNet with output blocks")
    levels, start = [], 0
    for n in reversed(list(num_res)):
        levels.append(range(start, start + n + 1))
        start += n + 1
    if start != len(blocks):
        raise ValueError(f"{type(diffusion_model).__name__}: {len(blocks)} output blocks do not match "
                         f"num_res_blocks {list(num_res)}")
    return levels


def feature_entry_block(diffusion_model, up_index: int, node: str) -> int:
    """The output block whose ``output_block_patch`` call sees the output of ``up_blocks[up_index]``."""
    levels = up_level_blocks(diffusion_model)
    if not 0 <= up_index < len(levels) - 1:
        raise ValueError(f"{node}: up block {up_index} is not available on this UNet: it has "
                         f"{len(levels)} decoder levels, features can be read from up blocks "
                         f"0-{len(levels) - 2}. Use a full-size SD1.x/SD2.x checkpoint (the method reads "
                         f"diffusers up_blocks[{up_index}])")
    return levels[up_index + 1].start


class FeaturesReady(Exception):
    """Raised by a tap made with ``stop_when_done=True`` once every requested feature is recorded:
    it ends the UNet call there (like DIFT's official forward, which stops after the last up block
    it needs). Catch it around the call that runs the model."""


class DecoderFeatureTap:
    """``output_block_patch`` recording the outputs of chosen up levels during one UNet call.

    ``entries`` maps output-block index -> up index (from :func:`feature_entry_block`);
    ``features[up_index]`` holds the last recorded tensor ``[B, C, h, w]``. Recording does not
    change ``h``. ``copy.deepcopy`` returns self, so clones of the patched model share one tap.
    With ``stop_when_done`` the tap raises :class:`FeaturesReady` as soon as all entries are
    recorded, so the rest of the decoder does not run (only for callers that need no output).
    """

    def __init__(self, entries: dict[int, int], stop_when_done: bool = False):
        self.entries = dict(entries)
        self.stop_when_done = stop_when_done
        self.features: dict[int, object] = {}

    @classmethod
    def for_up_blocks(cls, diffusion_model, up_indices, node: str,
                      stop_when_done: bool = False) -> "DecoderFeatureTap":
        return cls({feature_entry_block(diffusion_model, i, node): i for i in up_indices}, stop_when_done)

    def clear(self):
        self.features.clear()

    def __call__(self, h, hsp, transformer_options):
        block = transformer_options.get("block")
        if block is not None and block[0] == "output" and block[1] in self.entries:
            self.features[self.entries[block[1]]] = h
            if self.stop_when_done and len(self.features) == len(self.entries):
                raise FeaturesReady()
        return h, hsp

    def __deepcopy__(self, memo):
        return self
