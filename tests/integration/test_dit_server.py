"""FastDrag on flow-matching DiTs (Flux.1, SD3.x) in the real ComfyUI server, random weights.

Models: the harness's ``tiny_sd3`` and ``tiny_flux`` through UNETLoader (ComfyUI's own detection:
SD3 / Flux), and a narrow Flux.1 of ComfyUI's own classes (``FastDragTestNarrowFlux``, width 256) for the
float64 reference checks, since a loader-detected Flux is >= 535M parameters. Text: the tiny SD1.5
checkpoint's CLIP (768-wide context and pooled vector, what the tiny DiTs take); Flux's guidance via
FluxGuidance. 16-channel latents from a random 16-channel TAESD (``FastDragTestMakeVAE16``).

Checked against independent expectations: the float64 reference of ``fastdrag_testpack/flow_ref.py``
(schedule from the shift formulas, Euler inversion, V recorded and injected by hooks on the blocks' qkv
projections), K/V counts (kept layers x steps x chunks, each injected once per step, none missed), the
warp moving the handle cell to the target cell, no-op FastDragEdit == FastDragInvert -> FastDragSample.
Other families stay refused by name: tests/test_model_support.py (descriptions of Flux.2, Flux Fill,
Chroma, Qwen-Image, HiDream, Lumina 2, AuraFlow, WAN) and test_model_families.py (flow sampling on a UNet).
"""

import math
import re

import pytest
import torch

from comfy_server import PromptError, pattern_png
from graphs import points_json, points_node, save_node

IMAGE = "fastdrag_dit64.png"  # 64x64: 8x8 latent, 16 image tokens
VAE = "fastdrag_test_vae16.safetensors"
STEPS, STRENGTH, K = 4, 0.5, 2  # k = round(0.5 x 4) = 2 inversion / sampling steps
NOOP = [((24, 24), (24, 24))]


def load(path):
    return torch.load(path, weights_only=False)


@pytest.fixture(scope="module")
def dit_server(server):
    server.write_input(IMAGE, pattern_png(64, 64))
    server.run({"vae": {"class_type": "FastDragTestMakeVAE16", "inputs": {"name": VAE}}})
    return server


def front(server, model_node: dict, flux: bool) -> dict:
    """Text (tiny SD1.5 CLIP), image, 16-channel latent and the model under test ("model")."""
    p = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": server.ckpt_name}},
        "text": {"class_type": "CLIPTextEncode", "inputs": {"text": "a yellow square and a blue disc",
                                                            "clip": ["ckpt", 1]}},
        "img": {"class_type": "LoadImage", "inputs": {"image": IMAGE}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": VAE}},
        "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["vae", 0]}},
        "model": model_node,
    }
    p["pos"] = ({"class_type": "FluxGuidance", "inputs": {"conditioning": ["text", 0], "guidance": 3.5}} if flux
                else dict(p["text"]))
    return p


def invert(dit_kv="v_last_third", **kw):
    return {"class_type": "FastDragInvert", "inputs": {"model": ["model", 0], "positive": ["pos", 0],
                                                       "latent": ["enc", 0], "steps": STEPS, "strength": STRENGTH,
                                                       "cfg": 1.0, "dit_kv": dit_kv, **kw}}


def sample(latent, kv, consistency=True):
    return {"class_type": "FastDragSample", "inputs": {"model": ["model", 0], "positive": ["pos", 0],
                                                       "latent": list(latent), "kv": list(kv), "cfg": 1.0,
                                                       "consistency": consistency}}


def ref(path, start, keep):
    return {"class_type": "FastDragTestRefFlow", "inputs": {"model": ["model", 0], "positive": ["pos", 0],
                                                            "latent": ["enc", 0], "start": list(start),
                                                            "steps": STEPS, "strength": STRENGTH, "keep": keep,
                                                            "path": path}}


def injection_counts(server, entry, node):
    text = " ".join(server.texts(entry, node))
    m = re.search(r"(\d+) hits, (\d+) uncond->cond fallbacks, (\d+) misses", text)
    assert m, text
    return tuple(int(g) for g in m.groups())


def rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def image_v(stored, flux):
    """A stored V [B, heads, N, d] (Flux) or [B, N, heads, d] (SD3) as [B, N, heads x d]."""
    if flux:
        stored = stored.permute(0, 2, 1, 3)
    return stored.reshape(stored.shape[0], stored.shape[1], -1)


NARROW_FLUX = {"class_type": "FastDragTestNarrowFlux", "inputs": {"seed": 0, "depth": 2, "depth_single": 2}}


@pytest.mark.parametrize("family", ["narrow_flux", "sd3"])
def test_inversion_sampling_and_injection_match_float64_reference(dit_server, tmp_path, family):
    """Invert -> Sample (consistency on: V of the last third; off) against the float64 reference, the
    captured V against V recorded by hooks on the qkv projections, and the K/V counts."""
    server, flux = dit_server, family == "narrow_flux"
    model = NARROW_FLUX if flux else {"class_type": "UNETLoader", "inputs": {
        "unet_name": server.add_diffusion_model("tiny_sd3"), "weight_dtype": "default"}}
    f = {k: str(tmp_path / f"{k}.pt") for k in ("inv", "on", "off", "ref_on", "ref_off")}
    p = front(server, model, flux)
    p["inv"] = invert()
    p["on"] = sample(("inv", 0), ("inv", 1))
    p["off"] = sample(("inv", 0), ("inv", 1), consistency=False)
    p["ref_on"] = ref(f["ref_on"], ("inv", 0), "v_last_third")
    p["ref_off"] = ref(f["ref_off"], ("inv", 0), "none")
    p["save_inv"] = save_node(f["inv"], latent=("inv", 0), kv=("inv", 1))
    p["save_inv"]["inputs"]["kv_tensors"] = True
    p["save_on"] = save_node(f["on"], latent=("on", 0))
    p["save_off"] = save_node(f["off"], latent=("off", 0))
    entry = server.run(p)
    r = {k: load(v) for k, v in f.items()}
    layers = [("double_block", 0), ("double_block", 1), ("single_block", 0), ("single_block", 1)] if flux \
        else [("double_block", 0), ("double_block", 1)]
    kept = layers[len(layers) - math.ceil(len(layers) / 3):]
    assert r["ref_on"]["kept"] == kept
    # capture: kept layers x K steps x 1 chunk (cfg 1), labels K..1, nothing else
    assert sorted(r["inv"]["kv_keys"]) == sorted((layer, s, 0) for layer in kept for s in range(1, K + 1))
    assert r["inv"]["sigmas"] == pytest.approx(r["ref_on"]["sigmas"], rel=1e-6)
    for (layer, step, chunk), (k_t, v_t) in r["inv"]["kv"].items():
        assert k_t.numel() == 0  # V only by default
        want = r["ref_on"]["recorded_v"][(layer, step)]
        assert rel(image_v(v_t, flux), want) < 2e-3, (layer, step)
    assert rel(r["inv"]["latent"], r["ref_off"]["inverted"]) < 1e-4
    assert rel(r["off"]["latent"], r["ref_off"]["sampled"]) < 1e-4
    assert rel(r["on"]["latent"], r["ref_on"]["sampled"]) < 2e-3
    # the injection changes the result, by what the reference's injection changes
    assert not torch.equal(r["on"]["latent"], r["off"]["latent"])
    assert rel(r["ref_on"]["sampled"], r["ref_off"]["sampled"]) > 1e-4
    assert injection_counts(server, entry, "on") == (len(kept) * K, 0, 0)


def test_flux_loaded_by_unetloader_edits(dit_server, tmp_path):
    """tiny_flux (Flux.1 as ComfyUI's UNETLoader detects it, 535M parameters at the real width): a no-op
    FastDragEdit equals FastDragInvert -> FastDragSample exactly; every kept layer injected at each step."""
    server = dit_server
    model = {"class_type": "UNETLoader", "inputs": {"unet_name": server.add_diffusion_model("tiny_flux"),
                                                    "weight_dtype": "default"}}
    f = {k: str(tmp_path / f"{k}.pt") for k in ("on", "edit")}
    p = front(server, model, True)
    p["inv"] = invert(steps=2)
    p["on"] = sample(("inv", 0), ("inv", 1))
    p["pts"] = points_node(points_json(NOOP, 64, 64), image=("img", 0))
    p["edit"] = {"class_type": "FastDragEdit", "inputs": {
        "model": ["model", 0], "vae": ["vae", 0], "positive": ["pos", 0], "image": ["img", 0], "drag": ["pts", 0],
        "steps": 2, "strength": STRENGTH, "cfg": 1.0}}
    p["save_on"] = save_node(f["on"], latent=("on", 0))
    p["save_edit"] = save_node(f["edit"], latent=("edit", 1))
    entry = server.run(p)
    r = {k: load(v) for k, v in f.items()}
    assert torch.equal(r["edit"]["latent"], r["on"]["latent"])
    text = " ".join(server.texts(entry, "inv"))
    assert "Flux.1" in text or "Flux" in text, text
    assert injection_counts(server, entry, "on") == (1 * 1, 0, 0)  # 19 of 57 -> 1 of 2 layers, 1 step


def test_drag_moves_the_handle_cell_to_the_target(dit_server, tmp_path):
    """FastDragWarp on an inverted 16-channel latent: the masked cell on the handle lands on the target."""
    server = dit_server
    f = {k: str(tmp_path / f"{k}.pt") for k in ("inv", "warp")}
    p = front(server, NARROW_FLUX, True)
    p["inv"] = invert(capture_kv=False)
    p["pts"] = points_node(points_json([((20, 28), (36, 28))], 64, 64), image=("img", 0))
    p["warp"] = {"class_type": "FastDragWarp", "inputs": {"latent": ["inv", 0], "drag": ["pts", 0],
                                                          "handle_on_cell": "paper"}}
    p["save_inv"] = save_node(f["inv"], latent=("inv", 0))
    p["save_warp"] = save_node(f["warp"], latent=("warp", 0))
    server.run(p)
    inv, warp = load(f["inv"])["latent"], load(f["warp"])["latent"]
    assert inv.shape[1] == 16
    hx, hy, tx, ty = 20 // 8, 28 // 8, 36 // 8, 28 // 8  # latent cells (2, 3) -> (4, 3): 8 px per cell
    assert torch.equal(warp[0, :, ty, tx], inv[0, :, hy, hx])
    assert not torch.equal(warp, inv)


def tiny_sd3(server):
    return {"class_type": "UNETLoader", "inputs": {"unet_name": server.add_diffusion_model("tiny_sd3"),
                                                   "weight_dtype": "default"}}


def test_cfg_above_1_captures_and_injects_both_chunks(dit_server, tmp_path):
    """cfg 3 with a negative: K/V per cond and uncond chunk (kept layers x steps x 2), all injected."""
    server = dit_server
    p = front(server, tiny_sd3(server), False)
    p["neg"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["ckpt", 1]}}
    p["inv"] = invert(cfg=3.0, negative=["neg", 0])
    p["smp"] = sample(("inv", 0), ("inv", 1))
    p["smp"]["inputs"].update(cfg=3.0, negative=["neg", 0])
    p["save"] = save_node(str(tmp_path / "inv.pt"), kv=("inv", 1), latent=("smp", 0))
    entry = server.run(p)
    keys = load(str(tmp_path / "inv.pt"))["kv_keys"]
    kept = [("double_block", 1)]  # the last third of 2 joint blocks
    assert sorted(keys) == sorted((layer, s, c) for layer in kept for s in range(1, K + 1) for c in (0, 1))
    assert injection_counts(server, entry, "smp") == (len(kept) * K * 2, 0, 0)


def test_kv_of_another_model_family_is_refused(dit_server):
    """K/V captured on the SD1.5 UNet (4-channel latent), given to FastDragSample on SD3: refused by name."""
    server = dit_server
    p = front(server, tiny_sd3(server), False)
    p["ckpt_enc"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["ckpt", 2]}}
    p["inv_sd"] = {"class_type": "FastDragInvert", "inputs": {"model": ["ckpt", 0], "positive": ["text", 0],
                                                              "latent": ["ckpt_enc", 0], "steps": STEPS,
                                                              "strength": STRENGTH, "cfg": 1.0}}
    p["inv"] = invert()
    p["smp"] = sample(("inv", 0), ("inv_sd", 1))
    p["save"] = save_node("/nonexistent/never_written.pt", latent=("smp", 0))
    with pytest.raises(PromptError) as e:
        server.run(p)
    assert e.value.node_type == "FastDragSample" and "kv was captured on a [1, 4, 8, 8] latent" in e.value.message, e.value


def test_other_packs_dit_hooks_are_chained(dit_server, tmp_path):
    """Another pack's pass-through DiT block replaces and attention override on the model: FastDrag chains
    them (every block and attention call of the 2 + 2 model calls reaches them), captures and injects as
    without them, and the result is the same."""
    server = dit_server
    p = front(server, tiny_sd3(server), False)
    p["other"] = {"class_type": "FastDragTestDiTPatches", "inputs": {"model": ["model", 0], "tag": "chain"}}
    for prefix, model in (("a", "model"), ("b", "other")):
        p[prefix + "inv"] = invert()
        p[prefix + "inv"]["inputs"]["model"] = [model, 0]
        p[prefix + "smp"] = sample((prefix + "inv", 0), (prefix + "inv", 1))
        p[prefix + "smp"]["inputs"]["model"] = [model, 0]
        p[prefix + "save"] = save_node(str(tmp_path / f"{prefix}.pt"), latent=(prefix + "smp", 0))
    p["report"] = {"class_type": "FastDragTestDiTReport", "inputs": {"latent": ["bsmp", 0], "tag": "chain",
                                                                     "path": str(tmp_path / "calls.pt")}}
    entry = server.run(p)
    calls = load(str(tmp_path / "calls.pt"))
    assert calls == {"blocks": 2 * 2 * K, "attention": 2 * 2 * K}  # 2 joint blocks x (K inversion + K sampling)
    assert torch.equal(load(str(tmp_path / "a.pt"))["latent"], load(str(tmp_path / "b.pt"))["latent"])
    assert injection_counts(server, entry, "bsmp") == (K, 0, 0)
