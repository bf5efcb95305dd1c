"""benchmarks/drag_edit.py, the README's main job: the argument handling that needs no server."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import drag_edit  # noqa: E402


def test_each_method_runs_on_a_tiny_checkpoint_it_supports():
    """DragDiffusion reads diffusers up_blocks[2], which the harness's 2-level tiny UNet lacks: without
    --checkpoint it must run on the SD1.5-layout test UNet (it failed after 45 s of LoRA and inversion)."""
    assert drag_edit.tiny_kind(drag_edit.parse_args(["--method", "dragdiffusion"])) == "sd15_layout"
    assert drag_edit.tiny_kind(drag_edit.parse_args([])) == "sd15"
    assert drag_edit.tiny_kind(drag_edit.parse_args(["--workflow", "w.json"])) == "sd15"
