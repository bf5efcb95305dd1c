"""FastDrag on SDXL (eps) and SD2.x (v-prediction) in the real server, on tiny random checkpoints of those
architectures (``ComfyServer.add_checkpoint``); LCM sampling; refused model families.

The tiny models (harness README): SDXL = 6 levels, attention depth 1 on output blocks 0-7, so 8 decoder
self-attention layers; SD2.x-v = depth 1 on output blocks 0-9 and 11, so 11 layers. Images are 64 px
(8x8 latents), 3 steps and one text encode per model to keep them cheap on a CPU.
"""

import json
import os
import re

import pytest
import torch

from comfy_server import PromptError, pattern_png
from graphs import edit_node, invert_node, points_json, points_node, sample_node, save_node
from ui_workflow import to_api

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE = 64
IMAGE64 = "fastdrag_test_64.png"
STEPS, STRENGTH, K = 10, 0.3, 3  # t = 201, 101, 1: three UNet calls per loop (a tiny-SDXL call costs ~0.3 s)
FAMILIES = {
    # kind: (decoder attn1 output blocks of the tiny model, family as the nodes name it, prediction)
    "sdxl": (list(range(8)), "SDXL", "eps"),
    "sd2v": (list(range(10)) + [11], "SD2.x", "v_prediction"),
}
NOOP = [((20, 20), (20, 20))]


def load(path):
    return torch.load(path, weights_only=False)


def injection(server, entry, node):
    text = " ".join(server.texts(entry, node))
    m = re.search(r"(\d+) hits, (\d+) uncond->cond fallbacks, (\d+) misses", text)
    assert m, f"no injection stats in {node}'s text: {text!r}"
    return tuple(int(g) for g in m.groups())


def family_base(ckpt):
    # the empty prompt, as in the SDXL template (ComfyUI computes identical nodes once); the cfg > 1
    # negative is zeroed out instead of encoded (the SDXL text encoder costs ~1 s per prompt on a CPU)
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["pos", 0]}},
        "img": {"class_type": "LoadImage", "inputs": {"image": IMAGE64}},
        "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["ckpt", 2]}},
    }


def template_workflow(server, ckpt, prefix="wf_"):
    """workflows/FastDrag edit on SDXL.json as the UI saved it, in API form, on ``ckpt`` and the 64 px image."""
    with open(os.path.join(REPO, "workflows", "FastDrag edit on SDXL.json")) as fh:
        wf = json.load(fh)
    prompt = to_api(wf, server.get("/object_info"))
    types = sorted(n["class_type"] for n in prompt.values())
    assert types == ["CLIPTextEncode", "CheckpointLoaderSimple", "FastDragEdit", "FastDragPoints", "LoadImage",
                     "SaveImage"], types
    out = {}
    for nid, node in prompt.items():
        inputs = {k: [prefix + v[0], v[1]] if isinstance(v, list) else v for k, v in node["inputs"].items()}
        kind = node["class_type"]
        if kind == "CheckpointLoaderSimple":
            assert inputs["ckpt_name"] == "sd_xl_base_1.0.safetensors"
            inputs["ckpt_name"] = ckpt
        elif kind == "LoadImage":
            inputs["image"] = IMAGE64
        elif kind == "FastDragEdit":
            assert (inputs["steps"], inputs["strength"], inputs["cfg"]) == (10, 0.7, 1), inputs
            inputs["strength"] = STRENGTH  # 3 steps, as the rest of the fixture (a tiny-SDXL call is ~0.3 s)
            edit_id = prefix + nid
        out[prefix + nid] = {"class_type": kind, "inputs": inputs}
    return out, edit_id


# -- LCM sampling (issue 7 item 1) ------------------------------------------------------------------

def test_lcm_sampling_runs_as_plain_eps_like_the_official_code(server, tmp_path):
    """ModelSamplingDiscrete(lcm) in front of the model: the edit runs end to end at t = 601 and equals
    the edit without it; both nodes say so."""
    from graphs import base
    f = {k: str(tmp_path / f"{k}.pt") for k in ("plain", "lcm", "inv")}
    p = base(server.ckpt_name)
    del p["enc"]
    p["lcm"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["ckpt", 0], "sampling": "lcm",
                                                                 "zsnr": False}}
    p["pts"] = points_node(points_json([((48, 48), (64, 60))]))
    p["enc"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["ckpt", 2]}}
    p["inv"] = invert_node(model=("lcm", 0))
    p["inv"]["inputs"]["kv_device"] = "auto"  # the inputs of e_lcm's inversion: ComfyUI runs it once
    p["e_plain"] = edit_node()
    p["e_lcm"] = edit_node(model=("lcm", 0))
    p["s1"] = save_node(f["plain"], latent=("e_plain", 1))
    p["s2"] = save_node(f["lcm"], latent=("e_lcm", 1))
    p["s3"] = save_node(f["inv"], latent=("inv", 0))
    entry = server.run(p)
    plain, lcm = load(f["plain"])["latent"], load(f["lcm"])["latent"]
    assert torch.equal(plain, lcm), float((plain - lcm).abs().max())
    assert load(f["inv"])["timesteps"] == [601, 501, 401, 301, 201, 101, 1]
    note = "LCM sampling detected: FastDrag runs the UNet as a plain eps model on the 1000-step DDIM schedule"
    assert note in " ".join(server.texts(entry, "inv"))
    assert server.log_text().count(note) >= 3  # FastDragInvert x2 (inv, e_lcm's) and FastDragSample


def test_zero_terminal_snr_v_prediction_runs(server, tmp_path):
    """ModelSamplingDiscrete(v_prediction, zsnr) (v-prediction fine-tunes with a zero-terminal-SNR table)
    is a discrete v model: inversion and sampling run with every K/V entry captured and injected."""
    from graphs import base
    p = base(server.ckpt_name)
    p["ms"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["ckpt", 0], "sampling": "v_prediction",
                                                                "zsnr": True}}
    p["inv"] = invert_node(model=("ms", 0), steps=STEPS, strength=STRENGTH)
    p["s"] = sample_node(("inv", 0), ("inv", 1), model=("ms", 0))
    p["save"] = save_node(str(tmp_path / "z.pt"), latent=("s", 0))
    entry = server.run(p)
    assert " ".join(server.texts(entry, "inv")).startswith("inverted to t=201 in 3 steps on SD1.x, v_prediction; ")
    assert injection(server, entry, "s") == (4 * K, 0, 0)  # the tiny SD1.5's 4 decoder layers
    assert torch.isfinite(load(str(tmp_path / "z.pt"))["latent"]).all()


# -- refused families: before any UNet call, naming the family and what to change ----------------------

@pytest.mark.parametrize("node,inputs,needle", [
    ("ModelSamplingDiscrete", {"sampling": "x0", "zsnr": False}, "predicts x0 directly"),
    ("ModelSamplingDiscrete", {"sampling": "img_to_img", "zsnr": False}, "img_to_img sampling"),
    ("ModelSamplingContinuousEDM", {"sampling": "edm_playground_v2.5", "sigma_max": 80.0, "sigma_min": 0.002},
     "continuous-time EDM sampling"),
    ("ModelSamplingContinuousEDM", {"sampling": "eps", "sigma_max": 120.0, "sigma_min": 0.002},
     "continuous-time EDM sampling"),
    ("ModelSamplingSD3", {"shift": 3.0}, "flow-matching sampling"),
    ("ModelSamplingFlux", {"max_shift": 1.15, "base_shift": 0.5, "width": 1024, "height": 1024},
     "flow-matching sampling"),
])
def test_refused_sampling(server, node, inputs, needle):
    from graphs import base
    p = base(server.ckpt_name)
    p["ms"] = {"class_type": node, "inputs": {"model": ["ckpt", 0], **inputs}}
    p["inv"] = invert_node(model=("ms", 0))
    p["save"] = save_node("/nonexistent/never.pt", latent=("inv", 0))
    before = server.log_text().count("FastDragInvert: inverted")
    with pytest.raises(PromptError) as e:
        server.run(p)
    assert e.value.node_type == "FastDragInvert"
    msg = e.value.message
    assert msg.startswith("ValueError: FastDragInvert: this SD1.x model ") and needle in msg, msg
    assert "FastDrag supports SD1.x, SD2.x (eps and v-prediction) and SDXL-family" in msg, msg
    assert "remove the model sampling node" in msg or "ModelSamplingDiscrete(x0)" in msg, msg
    assert server.log_text().count("FastDragInvert: inverted") == before  # no inversion ran


# -- SDXL and SD2.x-v (after the SD1.5 tests above, which reuse the model the previous module loaded) --

@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_run(request, server, tmp_path_factory):
    """One prompt per family: stage pipeline at cfg 1 and 3, a no-op FastDragEdit, the float64 reference
    inversion, and the template (its graph and drag; strength 0.3 like the rest)."""
    kind = request.param
    ckpt = server.add_checkpoint(kind)
    server.write_input(IMAGE64, pattern_png(SIZE, SIZE))
    d = str(tmp_path_factory.mktemp(kind))
    f = {k: os.path.join(d, k + ".pt") for k in ("inv", "s_on", "noop", "ref", "inv3", "s3", "wf")}
    p = family_base(ckpt)
    wf, wf_edit = template_workflow(server, ckpt)
    p.update(wf)
    p["inv"] = invert_node(steps=STEPS, strength=STRENGTH)
    p["inv"]["inputs"]["kv_device"] = "auto"  # as FastDragEdit passes it: one inversion for inv, noop and wf
    p["s_on"] = sample_node(("inv", 0), ("inv", 1))
    p["pts_noop"] = points_node(points_json(NOOP, SIZE, SIZE))
    p["noop"] = edit_node(drag=("pts_noop", 0), steps=STEPS, strength=STRENGTH)
    p["inv3"] = invert_node(steps=STEPS, strength=STRENGTH, cfg=3.0, negative=("neg", 0))
    p["s3"] = sample_node(("inv3", 0), ("inv3", 1), cfg=3.0, negative=("neg", 0))
    p["ref"] = {"class_type": "FastDragTestRefInvert", "inputs": {"model": ["ckpt", 0], "positive": ["pos", 0],
                "latent": ["enc", 0], "steps": STEPS, "strength": STRENGTH, "path": f["ref"]}}
    p["save_inv"] = save_node(f["inv"], latent=("inv", 0), kv=("inv", 1))
    p["save_on"] = save_node(f["s_on"], latent=("s_on", 0))
    p["save_noop"] = save_node(f["noop"], latent=("noop", 1))
    p["save_inv3"] = save_node(f["inv3"], kv=("inv3", 1))
    p["save_s3"] = save_node(f["s3"], latent=("s3", 0))
    p["save_wf"] = save_node(f["wf"], latent=(wf_edit, 1), image=(wf_edit, 0))
    entry = server.run(p)
    return kind, entry, {k: load(v) for k, v in f.items()}


def test_family_is_recognised(server, family_run):
    kind, entry, _ = family_run
    _, label, pred = FAMILIES[kind]
    text = " ".join(server.texts(entry, "inv"))
    assert text.startswith(f"inverted to t=201 in 3 steps on {label}, {pred}; "), text


def test_noop_edit_equals_invert_then_sample(family_run):
    _, _, r = family_run
    assert torch.equal(r["noop"]["latent"], r["s_on"]["latent"])


def test_kv_entries_are_every_decoder_layer_step_and_chunk(server, family_run):
    kind, entry, r = family_run
    blocks = FAMILIES[kind][0]
    keys = r["inv"]["kv_keys"]
    assert sorted({k[0] for k in keys}) == [("output", b, 0) for b in blocks]
    assert sorted({k[1] for k in keys}, reverse=True) == [201, 101, 1]
    assert {k[2] for k in keys} == {0}
    assert len(keys) == len(blocks) * K == r["inv"]["kv_writes"] and r["inv"]["kv_repeats"] == 0
    assert injection(server, entry, "s_on") == (len(blocks) * K, 0, 0)
    keys3 = r["inv3"]["kv_keys"]
    assert len(keys3) == len(blocks) * K * 2 and {k[2] for k in keys3} == {0, 1}
    assert injection(server, entry, "s3") == (len(blocks) * K * 2, 0, 0)


def test_inversion_matches_float64_official(family_run):
    kind, _, r = family_run
    assert r["ref"]["v_pred"] == (kind == "sd2v") and r["ref"]["has_y"] == (kind == "sdxl")
    assert r["ref"]["timesteps"] == [1, 101, 201]
    ours, ref = r["inv"]["latent"].double(), r["ref"]["latent"].double()
    rel = float((ours - ref).norm() / ref.norm())
    print(f"{kind}: inversion vs float64 official: relative L2 error {rel:.2e}")
    assert rel < 1e-5, rel


def test_template_runs_and_edits(family_run):
    """workflows/FastDrag edit on SDXL.json (its graph and drag; it ships 10 steps / 0.7 / cfg 1, run at 0.3) on the
    tiny model."""
    _, entry, r = family_run
    assert r["wf"]["image"].shape == (1, SIZE, SIZE, 3)
    assert r["wf"]["latent"].shape == (1, 4, SIZE // 8, SIZE // 8)
    images = [img for out in entry["outputs"].values() for img in out.get("images", [])]
    assert len(images) == 1 and images[0]["filename"].startswith("FastDrag_SDXL"), entry["outputs"]


def test_dragdiffusion_on_the_family(server, family_run, tmp_path):
    """DragDiffusion on the family's model, from the fixture's inversion (cached): SD2.x-v runs the drag and
    the reference-controlled sampling (v-prediction, discrete); SDXL is refused by DragDiffusionEdit by name,
    before its LoRA training and its inversion."""
    kind, _, _ = family_run
    p = family_base(server.add_checkpoint(kind))
    p["pts"] = points_node(points_json([((20, 22), (36, 30))], SIZE, SIZE))
    before = len(server.log_text())
    if kind == "sdxl":
        p["edit"] = {"class_type": "DragDiffusionEdit", "inputs": {
            "model": ["ckpt", 0], "vae": ["ckpt", 2], "positive": ["pos", 0], "image": ["img", 0],
            "drag": ["pts", 0], "steps": 10, "strength": 0.7, "drag_steps": 80, "lora_steps": 80, "cfg": 1.0}}
        p["out"] = {"class_type": "PreviewAny", "inputs": {"source": ["edit", 2]}}
        with pytest.raises(PromptError) as e:
            server.run(p)
        msg = e.value.message
        assert e.value.node_type == "DragDiffusionEdit", msg
        assert "DragDiffusionEdit: this SDXL model is an SDXL-family UNet" in msg and "up_blocks[2]" in msg, msg
        assert "DragDiffusion supports SD1.x and SD2.x (eps and v-prediction) checkpoints" in msg, msg
        log = server.log_text()[before:]
        assert "DragDiffusionLoRA" not in log and "FastDragInvert: inverted" not in log, log
        return
    p["inv"] = invert_node(steps=STEPS, strength=STRENGTH)
    p["inv"]["inputs"]["kv_device"] = "auto"  # the fixture's inversion, from the cache
    p["drag"] = {"class_type": "DragDiffusionDrag", "inputs": {
        "model": ["ckpt", 0], "positive": ["pos", 0], "latent": ["inv", 0], "drag": ["pts", 0], "steps": 2,
        "learning_rate": 0.01, "lam": 0.1, "r_m": 1, "r_p": 3}}
    p["samp"] = {"class_type": "DragDiffusionSample", "inputs": {
        "model": ["ckpt", 0], "positive": ["pos", 0], "latent": ["drag", 0], "reference": ["inv", 0],
        "start_step": 0, "start_layer": 10, "cfg": 1.0}}
    path = str(tmp_path / "dd.pt")
    p["save"] = save_node(path, latent=("samp", 0))
    entry = server.run(p)
    assert "FastDragInvert: inverted" not in server.log_text()[before:]
    assert " ".join(server.texts(entry, "drag")).startswith("t=201: 2 iterations, 2 Adam steps")
    text = " ".join(server.texts(entry, "samp"))
    assert text.startswith("t=201 -> 0 in 3 steps on SD2.x, v_prediction; reference control on blocks 10-"), text
    assert torch.isfinite(load(path)["latent"]).all()
