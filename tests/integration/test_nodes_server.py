"""FastDrag nodes in the real ComfyUI server (tiny random SD1.5 checkpoint, CPU by default).

Run: COMFYUI_ROOT=~/.cache/comfy-harness/ComfyUI python -m pytest tests/integration -v
Skipped with the reason when no ComfyUI is found.
"""

import json
import os
import re
import struct

import pytest
import torch

from comfy_server import PromptError
from graphs import base, edit_node, invert_node, points_json, points_node, sample_node, save_node

import fastdrag_core
from fastdrag_core.points import image_mask_to_latent, image_points_to_latent

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRAG = [((48, 48), (64, 60)), ((92, 90), (84, 80))]
NOOP = [((40, 40), (40, 40)), ((90, 70), (90, 70))]
LAYERS_TINY = 4  # decoder attn1 layers of the harness's tiny UNet (output blocks 0-3)
K = 7            # round(0.7 * 10)


def load(path):
    return torch.load(path, weights_only=False)


def mask_nodes():
    """A 128x128 mask with a 56x56 editable square at (28, 28)."""
    return {
        "m0": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 128, "height": 128}},
        "m1": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 56, "height": 56}},
        "mask": {"class_type": "MaskComposite", "inputs": {"destination": ["m0", 0], "source": ["m1", 0],
                                                            "x": 28, "y": 28, "operation": "add"}},
    }


@pytest.fixture(scope="module")
def core_run(server, tmp_path_factory):
    """One prompt holding the stage pipeline, a no-op FastDragEdit, the warp and the float64 reference."""
    d = str(tmp_path_factory.mktemp("core"))
    f = {k: os.path.join(d, k + ".pt") for k in ("inv", "samp_on", "samp_off", "edit_noop", "warp", "ref", "mask",
                                                   "edit", "inv3", "samp3", "samp3_fallback")}
    p = base(server.ckpt_name)
    p.update(mask_nodes())
    p["inv"] = invert_node()
    p["s_on"] = sample_node(("inv", 0), ("inv", 1))
    p["s_off"] = sample_node(("inv", 0), ("inv", 1), consistency=False)
    p["pts_noop"] = points_node(points_json(NOOP))
    p["edit_noop"] = edit_node(drag=("pts_noop", 0))
    p["pts"] = points_node(points_json(DRAG), mask=("mask", 0))
    p["warp"] = {"class_type": "FastDragWarp", "inputs": {"latent": ["inv", 0], "drag": ["pts", 0],
                                                          "handle_on_cell": "paper"}}
    p["edit"] = edit_node(drag=("pts", 0))
    p["ref"] = {"class_type": "FastDragTestRefInvert", "inputs": {"model": ["ckpt", 0], "positive": ["pos", 0],
                                                                 "latent": ["enc", 0], "steps": 10, "strength": 0.7,
                                                                 "path": f["ref"]}}
    p["inv3"] = invert_node(cfg=3.0, negative=("neg", 0))
    p["s3"] = sample_node(("inv3", 0), ("inv3", 1), cfg=3.0, negative=("neg", 0))
    p["s3_fb"] = sample_node(("inv", 0), ("inv", 1), cfg=3.0, negative=("neg", 0))
    p["save_inv"] = save_node(f["inv"], latent=("inv", 0), kv=("inv", 1))
    p["save_on"] = save_node(f["samp_on"], latent=("s_on", 0))
    p["save_off"] = save_node(f["samp_off"], latent=("s_off", 0))
    p["save_noop"] = save_node(f["edit_noop"], latent=("edit_noop", 1))
    p["save_warp"] = save_node(f["warp"], latent=("warp", 0), mask=("warp", 1))
    p["save_mask"] = save_node(f["mask"], mask=("mask", 0))
    p["save_edit"] = save_node(f["edit"], latent=("edit", 1), image=("edit", 0))
    p["save_inv3"] = save_node(f["inv3"], kv=("inv3", 1))
    p["save_s3"] = save_node(f["samp3"], latent=("s3", 0))
    p["save_s3fb"] = save_node(f["samp3_fallback"], latent=("s3_fb", 0))
    entry = server.run(p)
    return entry, {k: load(v) for k, v in f.items()}


def hits(server, entry, node):
    text = " ".join(server.texts(entry, node))
    m = re.search(r"(\d+) hits, (\d+) uncond->cond fallbacks, (\d+) misses", text)
    assert m, f"no injection stats in {node}'s text: {text!r}"
    return tuple(int(g) for g in m.groups())


def test_noop_edit_equals_invert_then_sample(core_run):
    _, r = core_run
    assert torch.equal(r["edit_noop"]["latent"], r["samp_on"]["latent"])


def test_kv_entries_and_injections_cfg1(server, core_run):
    entry, r = core_run
    keys = r["inv"]["kv_keys"]
    layers = {k[0] for k in keys}
    assert len(layers) == LAYERS_TINY and all(layer[0] == "output" for layer in layers)
    assert sorted({k[1] for k in keys}, reverse=True) == [601, 501, 401, 301, 201, 101, 1]
    assert {k[2] for k in keys} == {0}
    assert len(keys) == LAYERS_TINY * K * 1
    assert r["inv"]["kv_dtypes"] == ["torch.float16"]
    assert hits(server, entry, "s_on") == (LAYERS_TINY * K, 0, 0)


def test_kv_entries_and_injections_cfg3(server, core_run):
    entry, r = core_run
    assert len(r["inv3"]["kv_keys"]) == LAYERS_TINY * K * 2
    assert {k[2] for k in r["inv3"]["kv_keys"]} == {0, 1}
    assert hits(server, entry, "s3") == (LAYERS_TINY * K * 2, 0, 0)
    # K/V captured at cfg 1 used at cfg 3: the negative pass reuses the positive entries
    assert hits(server, entry, "s3_fb") == (LAYERS_TINY * K, LAYERS_TINY * K, 0)


def test_consistency_on_and_off_differ(core_run):
    _, r = core_run
    diff = (r["samp_on"]["latent"] - r["samp_off"]["latent"]).abs().max()
    print(f"consistency on vs off: max abs difference {float(diff):.3e}")
    assert diff > 1e-3, diff


def test_warp_node_equals_core_lwf_warp(core_run):
    _, r = core_run
    inv = r["inv"]["latent"]
    hs = torch.tensor([h for h, _ in DRAG], dtype=torch.float64)
    ts = torch.tensor([t for _, t in DRAG], dtype=torch.float64)
    mask = image_mask_to_latent(r["mask"]["mask"][0] > 0, inv.shape[-2:])
    warped, null = fastdrag_core.lwf_warp(inv, image_points_to_latent(hs, (128, 128)),
                                          image_points_to_latent(ts, (128, 128)), mask, fill="keep",
                                          handle_on_cell="paper")
    assert torch.equal(r["warp"]["latent"], warped)
    assert torch.equal(r["warp"]["mask"] > 0.5, null)
    assert null.any(), "the test drag should leave empty cells"
    assert not torch.equal(warped, inv)


def test_inversion_matches_float64_official(core_run):
    _, r = core_run
    ours, ref = r["inv"]["latent"].double(), r["ref"]["latent"].double()
    assert r["ref"]["timesteps"] == [1, 101, 201, 301, 401, 501, 601]
    rel = float((ours - ref).norm() / ref.norm())
    print(f"inversion vs float64 official: relative L2 error {rel:.2e}, max abs {float((ours - ref).abs().max()):.2e}")
    assert rel < 1e-5, rel


def test_edit_output(core_run):
    _, r = core_run
    assert r["edit"]["image"].shape == (1, 128, 128, 3)
    assert r["edit"]["latent"].shape == (1, 4, 16, 16)
    assert not torch.equal(r["edit"]["latent"], r["samp_on"]["latent"])


def test_lora_and_controlnet_change_the_result(server, tmp_path):
    setup = base(server.ckpt_name)
    del setup["enc"]
    setup["mk_lora"] = {"class_type": "FastDragTestMakeLora", "inputs": {"model": ["ckpt", 0],
                        "name": "fastdrag_test_lora.safetensors", "seed": 1}}
    setup["mk_cn"] = {"class_type": "FastDragTestMakeControlNet", "inputs": {"model": ["ckpt", 0],
                      "name": "fastdrag_test_cn.safetensors", "seed": 2}}
    server.run(setup)
    f = {k: str(tmp_path / f"{k}.pt") for k in ("plain", "lora", "cn")}
    p = base(server.ckpt_name)
    p["pts"] = points_node(points_json(DRAG))
    p["lora"] = {"class_type": "LoraLoader", "inputs": {"model": ["ckpt", 0], "clip": ["ckpt", 1],
                 "lora_name": "fastdrag_test_lora.safetensors", "strength_model": 1.0, "strength_clip": 0.0}}
    p["cnl"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "fastdrag_test_cn.safetensors"}}
    p["cna"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {"positive": ["pos", 0], "negative": ["neg", 0],
                "control_net": ["cnl", 0], "image": ["img", 0], "strength": 1.0, "start_percent": 0.0,
                "end_percent": 1.0}}
    p["e_plain"] = edit_node()
    p["e_lora"] = edit_node(model=("lora", 0))
    p["e_cn"] = edit_node(positive=("cna", 0), negative=("cna", 1))
    p["s1"] = save_node(f["plain"], latent=("e_plain", 1))
    p["s2"] = save_node(f["lora"], latent=("e_lora", 1))
    p["s3"] = save_node(f["cn"], latent=("e_cn", 1))
    server.run(p)
    plain, lora, cn = (load(f[k])["latent"] for k in ("plain", "lora", "cn"))
    print(f"max abs change: LoRA {float((lora - plain).abs().max()):.3e}, ControlNet {float((cn - plain).abs().max()):.3e}")
    assert (lora - plain).abs().max() > 1e-3
    assert (cn - plain).abs().max() > 1e-3


def test_redrag_reuses_the_inversion(server, tmp_path):
    def run(drags):
        p = base(server.ckpt_name)
        del p["enc"]
        p["pts"] = points_node(points_json(drags))
        p["edit"] = edit_node(steps=8)  # steps 8: not shared with other tests' cached graphs
        p["save"] = save_node(str(tmp_path / f"{len(server.log_text())}.pt"), latent=("edit", 1))
        server.run(p)
        log = server.log_text()
        return log.count("FastDragInvert: inverted"), log.count("FastDragSample: sampled")

    inv0, smp0 = run(DRAG)
    inv1, smp1 = run([((50, 50), (70, 40))])
    assert inv1 == inv0, "a re-drag through FastDragEdit re-ran the inversion"
    assert smp1 == smp0 + 1


def test_image_not_multiple_of_8_is_cropped_like_vaeencode(server, tmp_path):
    p = base(server.ckpt_name)
    del p["enc"]
    p["crop"] = {"class_type": "ImageCrop", "inputs": {"image": ["img", 0], "width": 124, "height": 126, "x": 0, "y": 0}}
    p["pts"] = points_node(points_json(DRAG, 124, 126), image=("crop", 0))
    p["edit"] = edit_node(image=("crop", 0))
    p["save"] = save_node(str(tmp_path / "crop.pt"), latent=("edit", 1))
    server.run(p)
    assert load(str(tmp_path / "crop.pt"))["latent"].shape == (1, 4, 15, 15)


# -- bad input: the prompt ends with an error naming the node and the value -------------------------

def _points_graph(server, points, mask=None, extra=None):
    p = base(server.ckpt_name)
    del p["enc"]
    if extra:
        p.update(extra)
    p["pts"] = points_node(points, mask=mask)
    p["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["pts", 0]}}
    return p


@pytest.mark.parametrize("points,needle", [
    (points_json([((500, 10), (20, 20))]), "(500, 10) is outside the 128x128 image"),
    (points_json([((10, 10), (20, 20))] * 33), "33 drags, at most 32"),
    ('{"version": 1, "drags": [', "not valid JSON"),
    ("[[1, 2], [3]]", "point 1"),
])
def test_bad_points(server, points, needle):
    with pytest.raises(PromptError) as e:
        server.run(_points_graph(server, points))
    assert e.value.node_type == "FastDragPoints"
    assert "FastDragPoints" in e.value.message and needle in e.value.message, e.value.message
    assert e.value.message.count("128x128") <= 1, e.value.message  # the size said once


def test_handle_outside_the_mask_is_a_warning(server):
    """A handle on a pixel the mask leaves fixed: the run goes on, the node says which drag (its
    output for the editor, and the log); a handle inside is not named."""
    extra = {"ones": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 128, "height": 128}},
             "hole": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 64}},
             "m": {"class_type": "MaskComposite", "inputs": {"destination": ["ones", 0], "source": ["hole", 0],
                                                              "x": 0, "y": 0, "operation": "multiply"}}}
    pts = points_json([((100, 100), (90, 90)), ((10, 12), (80, 80))])
    out = server.run(_points_graph(server, pts, mask=("m", 0), extra=extra))["outputs"]["pts"]
    warning = out["fastdrag_warning"][0]
    assert warning.startswith("WARNING: handle of drag 2 (10, 12) is outside the mask"), warning
    assert "drag 1" not in warning
    assert "handle of drag 2 (10, 12) is outside the mask" in server.log_text()


def test_mask_of_wrong_size(server):
    extra = {"m": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}}}
    with pytest.raises(PromptError) as e:
        server.run(_points_graph(server, points_json(DRAG), mask=("m", 0), extra=extra))
    assert e.value.node_type == "FastDragPoints"
    assert "the mask is 64x64 (WxH), which does not match the 128x128 image" in e.value.message, e.value.message


def test_crop_margin_target_refused_by_points_before_any_unet_call(server):
    """126x128: VAEEncode keeps x in [3, 123). A target at x = 124 is refused by FastDragPoints with
    the message the editor's preview route gives, and the inversion downstream never runs."""
    p = base(server.ckpt_name)
    del p["enc"]
    p["crop"] = {"class_type": "ImageCrop", "inputs": {"image": ["img", 0], "width": 126, "height": 128, "x": 0, "y": 0}}
    p["pts"] = points_node(points_json([((60, 60), (124, 60))], 126, 128), image=("crop", 0))
    p["edit"] = edit_node(image=("crop", 0), steps=9)
    p["out"] = {"class_type": "PreviewImage", "inputs": {"images": ["edit", 0]}}
    before = server.log_text().count("FastDragInvert: inverted")
    with pytest.raises(PromptError) as e:
        server.run(p)
    assert e.value.node_type == "FastDragPoints"
    assert ("FastDragPoints: points: drag 0 target (124, 60) is in the border VAEEncode crops away: a 126x128 "
            "image is encoded as its centred 120x128 part") in e.value.message, e.value.message
    assert server.log_text().count("FastDragInvert: inverted") == before


def test_no_drags_sends_the_picture_then_stops(server):
    """Any upstream (here Image Scale): with no drags the node sends its picture to the editor with
    what to do next, and the run ends without an error: the nodes after it are skipped."""
    p = base(server.ckpt_name)
    del p["enc"]
    p["scaled"] = {"class_type": "ImageScale", "inputs": {"image": ["img", 0], "upscale_method": "nearest-exact",
                   "width": 96, "height": 64, "crop": "disabled"}}
    p["pts"] = points_node('{"version": 1, "drags": []}', image=("scaled", 0))
    p["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["pts", 0]}}
    temp = os.path.join(server.base, "temp")
    before = set(os.listdir(temp)) if os.path.isdir(temp) else set()
    entry = server.run(p)
    assert entry["status"]["status_str"] == "success"
    assert "place drags on it" in entry["outputs"]["pts"]["fastdrag_notice"][0]
    assert "show" not in entry["outputs"]  # PreviewAny after it did not run
    new = [f for f in os.listdir(temp) if f not in before and f.endswith(".png")]
    assert len(new) == 1, new
    with open(os.path.join(temp, new[0]), "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24]) == (96, 64)


def test_points_from_a_link_are_sent_back_as_used(server):
    """`points` fed by a link (a string node): the node sends the drags it used, validated and
    rescaled to its image (placed on 256x256, the image is 128x128: halved), for the editor to draw."""
    p = base(server.ckpt_name)
    del p["enc"]
    p["txt"] = {"class_type": "PrimitiveString", "inputs": {"value": points_json(
        [((100, 40), (121, 61)), ((30, 200), (10, 180))], 256, 256)}}
    p["pts"] = points_node(["txt", 0])
    p["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["pts", 0]}}
    out = server.run(p)["outputs"]["pts"]
    assert json.loads(out["fastdrag_points"][0]) == {
        "version": 1, "width": 128, "height": 128,
        "drags": [{"handle": [50, 20], "target": [60.5, 30.5]}, {"handle": [15, 100], "target": [5, 90]}]}
    assert out["fastdrag_points_from"] == [["txt", 0]] and out["fastdrag_image"][0]["type"] == "temp"
    # the same drags typed into the widget: no link
    p["pts"] = points_node(p.pop("txt")["inputs"]["value"])
    out = server.run(p)["outputs"]["pts"]
    assert out["fastdrag_points_from"] == [None] and json.loads(out["fastdrag_points"][0])["width"] == 128


def test_kv_from_another_resolution(server):
    p = base(server.ckpt_name)
    p["small"] = {"class_type": "ImageScale", "inputs": {"image": ["img", 0], "upscale_method": "nearest-exact",
                  "width": 64, "height": 64, "crop": "disabled"}}
    p["enc64"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["small", 0], "vae": ["ckpt", 2]}}
    p["inv"] = invert_node()
    p["inv64"] = invert_node(latent=("enc64", 0))
    p["s"] = sample_node(("inv", 0), ("inv64", 1))
    p["save"] = save_node("/nonexistent/never.pt", latent=("s", 0))
    with pytest.raises(PromptError) as e:
        server.run(p)
    assert e.value.node_type == "FastDragSample"
    assert "[1, 4, 16, 16]" in e.value.message and "[1, 4, 8, 8]" in e.value.message
    assert "another resolution" in e.value.message


def test_kv_from_another_schedule(server):
    p = base(server.ckpt_name)
    p["inv"] = invert_node()
    p["inv20"] = invert_node(steps=20, strength=0.35)
    p["s"] = sample_node(("inv", 0), ("inv20", 1))
    p["save"] = save_node("/nonexistent/never.pt", latent=("s", 0))
    with pytest.raises(PromptError) as e:
        server.run(p)
    assert e.value.node_type == "FastDragSample"
    assert "another schedule" in e.value.message and "steps=20" in e.value.message, e.value.message


def test_kv_from_a_model_with_another_noise_schedule(server):
    """K/V and latent inverted on the plain model, sampled on the same UNet with zero-terminal-SNR
    sigmas (ModelSamplingDiscrete zsnr): same timesteps, other sigma_t, refused before any UNet call."""
    p = base(server.ckpt_name)
    p["zsnr"] = {"class_type": "ModelSamplingDiscrete",
                 "inputs": {"model": ["ckpt", 0], "sampling": "eps", "zsnr": True}}
    p["inv"] = invert_node()
    p["s"] = sample_node(("inv", 0), ("inv", 1), model=("zsnr", 0))
    p["save"] = save_node("/nonexistent/never.pt", latent=("s", 0))
    with pytest.raises(PromptError) as e:
        server.run(p)
    assert e.value.node_type == "FastDragSample"
    assert re.search(r"the model's sigma at t=601 is [0-9.]+ but kv was captured at [0-9.]+: it comes from "
                     r"a model with another noise schedule", e.value.message), e.value.message


def test_empty_kv_with_consistency_is_refused(server):
    """K/V captured with capture_kv off hold nothing: FastDragSample must not silently run plain DDIM."""
    p = base(server.ckpt_name)
    p["inv"] = invert_node(steps=4, strength=0.5)
    p["inv"]["inputs"]["capture_kv"] = False
    p["s"] = sample_node(("inv", 0), ("inv", 1))
    p["save"] = save_node("/nonexistent/never.pt", latent=("s", 0))
    with pytest.raises(PromptError) as e:
        server.run(p)
    assert e.value.node_type == "FastDragSample"
    assert "kv is empty" in e.value.message and "capture_kv" in e.value.message, e.value.message
    p["s"] = sample_node(("inv", 0), ("inv", 1), consistency=False)  # without consistency it is plain DDIM: fine
    p["save"] = save_node(os.path.join(server.base, "empty_kv_off.pt"), latent=("s", 0))
    server.run(p)


def test_kv_from_another_unet_is_refused(server):
    """Same latent size and schedule, but K/V of another UNet's decoder layers (SD1.5 layout: 9, the
    harness's tiny SD1.5: 4): refused by name instead of sampling with misses."""
    p = base(server.ckpt_name)
    p["other"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": server.add_checkpoint("sd15_layout")}}
    p["inv"] = invert_node(steps=4, strength=0.5)
    p["inv_other"] = invert_node(model=("other", 0), steps=4, strength=0.5)
    p["s"] = sample_node(("inv", 0), ("inv_other", 1))
    p["save"] = save_node("/nonexistent/never.pt", latent=("s", 0))
    with pytest.raises(PromptError) as e:
        server.run(p)
    assert e.value.node_type == "FastDragSample"
    assert "another UNet" in e.value.message and "9 decoder self-attention layers" in e.value.message, e.value.message


def test_drag_of_another_image(server):
    p = base(server.ckpt_name)
    p["small"] = {"class_type": "ImageScale", "inputs": {"image": ["img", 0], "upscale_method": "nearest-exact",
                  "width": 64, "height": 64, "crop": "disabled"}}
    p["pts"] = points_node(points_json([((10, 10), (20, 20))], 64, 64), image=("small", 0))
    p["inv"] = invert_node()
    p["warp"] = {"class_type": "FastDragWarp", "inputs": {"latent": ["inv", 0], "drag": ["pts", 0],
                                                          "handle_on_cell": "paper"}}
    p["save"] = save_node("/nonexistent/never.pt", latent=("warp", 0))
    with pytest.raises(PromptError) as e:
        server.run(p)
    assert e.value.node_type == "FastDragWarp" and "64x64 image" in e.value.message, e.value.message


def test_workflows_folder_is_served_as_templates(server):
    """workflows/ is served as the pack's templates, with each one's thumbnail; every node of every
    template is a registered node type (or one of the front end's own: notes, reroutes)."""
    shipped = sorted(f[:-5] for f in os.listdir(os.path.join(REPO, "workflows")) if f.endswith(".json"))
    names = server.get("/workflow_templates").get("comfyui-fastdrag")
    assert sorted(names) == shipped, names
    info = server.get("/object_info")
    for name in names:
        from urllib.parse import quote
        wf = server.get(f"/api/workflow_templates/comfyui-fastdrag/{quote(name)}.json")
        assert wf["version"] == 0.4 and wf["links"]
        missing = {n["type"] for n in wf["nodes"]} - set(info) - {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
        assert not missing, f"{name}: unknown node types {missing}"
        status, body = server._http("GET", f"/api/workflow_templates/comfyui-fastdrag/{quote(name)}.jpg")
        assert status == 200 and body[:3] == b"\xff\xd8\xff", (name, status)  # the thumbnail, a JPEG
    for node_id in ("FastDragPoints", "FastDragInvert", "FastDragWarp", "FastDragBNNI", "FastDragSample",
                    "FastDragEdit", "FastDragMoveObject"):
        spec = info[node_id]
        assert spec["category"].startswith("FastDrag") and spec["description"], node_id
        for group in ("required", "optional"):
            for inp, (_, opts) in spec["input"].get(group, {}).items():
                assert opts.get("tooltip"), f"{node_id}.{inp} has no tooltip"
        assert all(spec["output_tooltips"]), node_id


def test_cancel_stops_within_a_step(server):
    """Cancel (POST /interrupt) during a long inversion ends the prompt within about one UNet step."""
    import time

    p = base(server.ckpt_name)
    p["inv"] = invert_node(steps=400, strength=1.0)
    p["save"] = save_node("/nonexistent/never.pt", kv=("inv", 1))
    pid = server.submit(p)
    t0 = time.time()
    while not server.running() and time.time() - t0 < 60:
        time.sleep(0.05)
    time.sleep(3.0)  # well inside the 400 steps (about 0.05-0.2 s each on the tiny model)
    t_int = time.time()
    server.interrupt()
    entry = server.wait(pid, timeout=60, raise_errors=False)
    elapsed = time.time() - t_int
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, kinds
    data = dict(entry["status"]["messages"])["execution_interrupted"]
    assert data["node_type"] == "FastDragInvert"
    print(f"interrupt -> prompt ended in {elapsed:.2f}s")
    assert elapsed < 5.0, f"took {elapsed:.1f}s to stop"


def test_empty_mask_placeholder_is_named_empty(server):
    # LoadImage gives a 64x64 all-zero mask for a picture without alpha: say "empty", not "wrong size"
    extra = {"m": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 64}}}
    with pytest.raises(PromptError) as e:
        server.run(_points_graph(server, points_json(DRAG), mask=("m", 0), extra=extra))
    assert e.value.node_type == "FastDragPoints"
    assert "FastDragPoints: the mask is empty" in e.value.message, e.value.message


def test_x0_model_is_refused_by_name(server):
    # v-prediction is supported since issue 9; the refused families are in test_model_families.py
    p = base(server.ckpt_name)
    p["x0"] = {"class_type": "ModelSamplingDiscrete",
               "inputs": {"model": ["ckpt", 0], "sampling": "x0", "zsnr": False}}
    p["inv"] = invert_node(model=("x0", 0))
    p["save"] = save_node("/nonexistent/never.pt", latent=("inv", 0))
    with pytest.raises(PromptError) as e:
        server.run(p)
    assert e.value.node_type == "FastDragInvert"
    assert "FastDragInvert: this SD1.x model predicts x0 directly" in e.value.message, e.value.message
