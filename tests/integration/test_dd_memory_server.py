"""Memory of the DragDiffusion gradient loops in the real server (tiny SD1.5-layout checkpoint, 64 px):
a drag leaves no tensor behind, and neither loop copies a UNet weight (issues 13.2 and 16.2).

The probes are test-pack nodes (fastdrag_testpack/memory_probe.py): a census of live tensors after a
full garbage collection, and a model wrapper that looks at the UNet's parameters at the first UNet call
with gradients on (inside the loop).

Run: COMFYUI_ROOT=~/.cache/comfy-harness/ComfyUI python3 -m pytest tests/integration/test_dd_memory_server.py
"""

import os

import torch

from graphs import points_json, points_node
from test_dragdiffusion_server import DRAG, SIZE, dd_base, drag_node

LAYERS_LAYOUT = 128  # sd15_layout: 16 transformer blocks x (attn1 + attn2) x (to_q, to_k, to_v, to_out.0)


def load(path):
    return torch.load(path, weights_only=False)


def probe_node(path, model=("ckpt", 0)):
    return {"class_type": "FastDragTestWeightProbe", "inputs": {"model": list(model), "path": path}}


def live_node(path, latent):
    return {"class_type": "FastDragTestLiveTensors", "inputs": {"latent": list(latent), "path": path}}


def assert_loaded_weights_used_in_place(probe: dict, pointers: dict):
    """Inside the loop every UNet parameter is an ordinary tensor that requires no grad, on the memory
    of the weight the loaded model holds (no copy)."""
    assert probe["total"] == len(pointers) > 100
    assert probe["inference"] == 0 and probe["requires_grad"] == 0, probe
    moved = [n for n, ptr in probe["ptrs"].items() if ptr != pointers[n]]
    assert not moved, f"{len(moved)} of {len(pointers)} UNet weights were copied for the loop, e.g. {moved[:3]}"


def test_drag_uses_the_loaded_weights_and_leaves_no_tensor_behind(server, tmp_path):
    """DragDiffusionDrag: no weight copy inside the loop, no weight function (ComfyUI's cast would copy
    such a weight at every call), and the live tensors after the node are those before it (a run that
    kept its autograd graph or weight copies, as the old memory meter's cycle did, fails here)."""
    f = {k: str(tmp_path / f"{k}.pt") for k in ("probe", "ptrs", "live0", "live1", "live2")}
    p = dd_base(server)
    p["pts"] = points_node(points_json(DRAG, SIZE, SIZE))
    p["probe"] = probe_node(f["probe"])
    p["ptrs"] = {"class_type": "FastDragTestWeightPointers",
                 "inputs": {"model": ["ckpt", 0], "latent": ["inv", 0], "path": f["ptrs"]}}
    p["live0"] = live_node(f["live0"], ("inv", 0))
    p["drag"] = drag_node(latent=("live0", 0), steps=2, model=("probe", 0))
    p["live1"] = live_node(f["live1"], ("drag", 0))
    p["drag2"] = drag_node(latent=("live1", 0), steps=2, model=("probe", 0), lam=0.2)  # a second run, not cached
    p["live2"] = live_node(f["live2"], ("drag2", 0))
    server.run(p)
    probe, pointers = load(f["probe"]), load(f["ptrs"])
    assert_loaded_weights_used_in_place(probe, pointers)
    assert probe["with_weight_function"] == [] and probe["with_bias_function"] == []
    live = [load(f[k])["bytes"] for k in ("live0", "live1", "live2")]
    assert live[1] - live[0] < 2 ** 20 and live[2] - live[1] < 2 ** 20, f"live tensor bytes per run: {live}"


def test_lora_uses_the_loaded_weights_and_adds_its_branch_on_the_projections(server, tmp_path):
    """DragDiffusionLoRA: inside the training loop every UNet weight is the loaded one (no copy), no
    module has a weight function (ComfyUI's cast copies such a weight at every call, and a weight
    adapter forms W + B A: before, every weight and bias had one), and the LoRA's branch is hooked onto
    exactly the attention projections; after the node, no hook is left on the model."""
    f = {k: str(tmp_path / f"{k}.pt") for k in ("probe", "ptrs", "after")}
    p = dd_base(server)
    p["probe"] = probe_node(f["probe"])
    p["ptrs"] = {"class_type": "FastDragTestWeightPointers",
                 "inputs": {"model": ["ckpt", 0], "latent": ["inv", 0], "path": f["ptrs"]}}
    p["lora"] = {"class_type": "DragDiffusionLoRA", "inputs": {
        "model": ["probe", 0], "positive": ["pos", 0], "latent": ["enc", 0], "steps": 2, "learning_rate": 5e-3,
        "rank": 4, "batch_size": 1, "seed": 3}}
    p["after"] = probe_node(f["after"], model=("lora", 0))  # a model evaluated with grad after the LoRA
    p["drag"] = drag_node(steps=1, model=("after", 0))
    p["pts"] = points_node(points_json(DRAG, SIZE, SIZE))
    p["out"] = live_node(str(tmp_path / "live.pt"), ("drag", 0))
    server.run(p)
    probe, pointers = load(f["probe"]), load(f["ptrs"])
    assert_loaded_weights_used_in_place(probe, pointers)
    assert probe["with_weight_function"] == [] and probe["with_bias_function"] == []
    hooked = probe["with_forward_hook"]
    assert len(hooked) == LAYERS_LAYOUT, hooked[:5]
    assert all(n.split(".")[-2] in ("attn1", "attn2") and n.split(".")[-1] in ("to_q", "to_k", "to_v")
               or n.endswith((".attn1.to_out.0", ".attn2.to_out.0")) for n in hooked), hooked
    # the trained model (the LoRA as ComfyUI's weight patch) in the next gradient loop: no hook left over
    assert load(f["after"])["with_forward_hook"] == []
