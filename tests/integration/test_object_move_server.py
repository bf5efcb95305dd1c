"""Object moving / copy in the real server (tiny random SD1.5 checkpoint): FastDragMoveObject and
FastDragEdit's task against the official transcription and a float64 reference of the pipeline."""

import importlib.util
import json
import os
import re
import time

import pytest
import torch

from comfy_server import PromptError
from graphs import base, edit_node, invert_node, points_json, points_node, sample_node, save_node

HERE = os.path.dirname(os.path.abspath(__file__))
LAYERS_TINY = 4  # decoder attn1 layers of the tiny UNet
STRENGTH = 0.3   # 3 inversion and 3 sampling steps (t = 201, 101, 1): CI time; the maths is per step
K = 3            # round(0.3 * 10)
DRAG = [((50, 50), (80, 76))]   # latent shift (dy, dx) = (3, 3): the object overlaps its old place
NOOP = [((60, 60), (60, 60))]


def _official():
    spec = importlib.util.spec_from_file_location("fastdrag_official_object_move",
                                                  os.path.join(HERE, "fastdrag_testpack", "official_object_move.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


OFF = _official()


def _flat(drags):
    return json.dumps([list(p) for d in drags for p in d])


def _mask(name, x, y, w, h):
    return {
        f"{name}0": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 128, "height": 128}},
        f"{name}1": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": w, "height": h}},
        name: {"class_type": "MaskComposite", "inputs": {"destination": [f"{name}0", 0], "source": [f"{name}1", 0],
                                                         "x": x, "y": y, "operation": "add"}},
    }


def _move(latent, drag, mode="move", overlap="keep object", fill_region=None):
    inputs = {"latent": list(latent), "drag": list(drag), "mode": mode, "overlap": overlap}
    if fill_region is not None:
        inputs["fill_region"] = list(fill_region)
    return {"class_type": "FastDragMoveObject", "inputs": inputs}


def _ref(path, task, fill_region=None):
    inputs = {"model": ["ckpt", 0], "positive": ["pos", 0], "latent": ["enc", 0], "mask": ["mask", 0],
              "points": _flat(DRAG), "task": task, "steps": 10, "strength": STRENGTH, "path": path}
    if fill_region is not None:
        inputs["fill_region"] = list(fill_region)
    return {"class_type": "FastDragTestRefObjectMove", "inputs": inputs}


@pytest.fixture(scope="module")
def run(server, tmp_path_factory):
    d = str(tmp_path_factory.mktemp("objmove"))
    f = {k: os.path.join(d, k + ".pt") for k in ("inv", "plain", "noop", "mv", "s_mv", "ref_mv", "cp", "fill", "mask", "region", "keep", "s_keep", "edit",
                                                   "old", "stage_drag")}
    p = base(server.ckpt_name)
    p.update(_mask("mask", 30, 26, 44, 50))      # the object
    p.update(_mask("region", 84, 4, 30, 20))     # a fill region
    p["inv"] = invert_node(strength=STRENGTH)
    p["plain"] = sample_node(("inv", 0), ("inv", 1))
    p["pts"] = points_node(points_json(DRAG), mask=("mask", 0))
    p["pts0"] = points_node(points_json(NOOP), mask=("mask", 0))
    p["noop"] = edit_node(drag=("pts0", 0), task="copy object", strength=STRENGTH)
    p["mv"] = _move(("inv", 0), ("pts", 0), overlap="official")
    p["s_mv"] = sample_node(("mv", 0), ("inv", 1))
    p["cp"] = _move(("inv", 0), ("pts", 0), mode="copy")
    p["fill"] = _move(("inv", 0), ("pts", 0), overlap="official", fill_region=("region", 0))
    p["keep"] = _move(("inv", 0), ("pts", 0))
    p["s_keep"] = sample_node(("keep", 0), ("inv", 1))
    p["edit"] = edit_node(drag=("pts", 0), task="move object", strength=STRENGTH)
    p["ref_mv"] = _ref(f["ref_mv"], "object moving")
    # a FastDragEdit as saved before the task input existed: the drag pipeline, as before
    p["old"] = edit_node(drag=("pts", 0), strength=STRENGTH)
    p["warp"] = {"class_type": "FastDragWarp", "inputs": {"latent": ["inv", 0], "drag": ["pts", 0],
                                                          "handle_on_cell": "paper"}}
    p["bnni"] = {"class_type": "FastDragBNNI", "inputs": {"latent": ["warp", 0], "null_mask": ["warp", 1],
                                                          "fill": "bnni"}}
    p["stage_drag"] = sample_node(("bnni", 0), ("inv", 1))
    p["save_old"] = save_node(f["old"], latent=("old", 1))
    p["save_stage_drag"] = save_node(f["stage_drag"], latent=("stage_drag", 0))
    for k, src in (("inv", "inv"), ("plain", "plain"), ("mv", "mv"), ("s_mv", "s_mv"), ("cp", "cp"),
                   ("fill", "fill"), ("keep", "keep"), ("s_keep", "s_keep")):
        p["save_" + k] = save_node(f[k], latent=(src, 0))
    p["save_noop"] = save_node(f["noop"], latent=("noop", 1))
    p["save_edit"] = save_node(f["edit"], latent=("edit", 1), image=("edit", 0))
    p["save_mask"] = save_node(f["mask"], mask=("mask", 0))
    p["save_region"] = save_node(f["region"], mask=("region", 0))
    t0 = time.perf_counter()
    entry = server.run(p)
    print(f"object move prompt: {time.perf_counter() - t0:.1f} s")
    return entry, {k: torch.load(v, weights_only=False) for k, v in f.items()}


def _hits(server, entry, node):
    text = " ".join(server.texts(entry, node))
    m = re.search(r"(\d+) hits, (\d+) uncond->cond fallbacks, (\d+) misses", text)
    assert m, f"no injection stats in {node}'s text: {text!r}"
    return tuple(int(g) for g in m.groups())


def _official_edit(r, task, fill=False):
    m, shift_yx, target, mf = OFF.preprocess(_flat_points(), r["mask"]["mask"][0], 128, 128,
                                             r["region"]["mask"][0] if fill else None)
    return OFF.latent_edit(r["inv"]["latent"].clone(), m, shift_yx, target, task, mask_fill=mf)


def _flat_points():
    return [list(p) for d in DRAG for p in d]


def test_move_and_copy_latents_equal_the_official_transcription(run):
    _, r = run
    for key, task, fill in (("mv", "object moving", False), ("cp", "object copy", False),
                            ("fill", "object moving", True)):
        want = _official_edit(r, task, fill)
        diff = float((r[key]["latent"] - want).abs().max())
        print(f"{key}: max abs difference to the official transcription {diff:.3e}")
        assert diff <= 1e-6, (key, diff)
        assert not torch.equal(r[key]["latent"], r["inv"]["latent"])
    assert not torch.equal(r["fill"]["latent"], r["mv"]["latent"])  # the fill region changed the fill
    assert not torch.equal(r["keep"]["latent"], r["mv"]["latent"])  # the overlap option matters here


def test_pipeline_matches_float64_reference_with_kv_injection(server, run):
    entry, r = run
    for key, ref in (("s_mv", "ref_mv"),):
        ours, want = r[key]["latent"].double(), r[ref]["latent"].double()
        assert r[ref]["layers"] == LAYERS_TINY and r[ref]["injected"] == 2 * LAYERS_TINY * K
        rel = float((ours - want).norm() / want.norm())
        print(f"{key} vs float64 reference: relative L2 {rel:.2e}, max abs {float((ours - want).abs().max()):.2e}")
        assert rel < 1e-4, (key, rel)
        assert _hits(server, entry, key) == (LAYERS_TINY * K, 0, 0)
    # the edit matters: the moved and the plain results differ well beyond the agreement above
    assert float((r["s_mv"]["latent"] - r["plain"]["latent"]).norm() / r["plain"]["latent"].norm()) > 1e-2


def test_noop_copy_returns_the_plain_invert_then_sample(run):
    _, r = run
    assert torch.equal(r["noop"]["latent"], r["plain"]["latent"])


def test_edit_task_expands_into_the_stage_nodes(run):
    _, r = run
    assert torch.equal(r["edit"]["latent"], r["s_keep"]["latent"])
    assert r["edit"]["image"].shape == (1, 128, 128, 3)


def test_edit_without_task_is_the_drag_as_before(run):
    _, r = run
    assert torch.equal(r["old"]["latent"], r["stage_drag"]["latent"])
    assert not torch.equal(r["old"]["latent"], r["s_keep"]["latent"])


def _rgba_png(w, h, alpha):
    """An RGBA PNG (stdlib only): a grey picture whose alpha(x, y) gives LoadImage's mask (1 - alpha)."""
    import struct
    import zlib
    rows = b"".join(b"\x00" + b"".join(bytes((128, 128, 128, alpha(x, y))) for x in range(w)) for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_preview_route_move_and_copy(server):
    server.write_input("fastdrag_objmove_mask.png",
                       _rgba_png(128, 128, lambda x, y: 0 if 30 <= x < 74 and 26 <= y < 76 else 255))
    body = {"image": {"filename": "fastdrag_test.png"}, "mask": {"filename": "fastdrag_objmove_mask.png"},
            "points": points_json(DRAG), "task": "move object", "overlap": "official"}
    status, png = server._http("POST", "/fastdrag/preview", json.dumps(body).encode())
    assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n", png[:300]
    h = server.last_headers
    assert h["X-FastDrag-Shift"] == "3,3" and h["X-FastDrag-Grid"] == "16x16" and int(h["X-FastDrag-Holes"]) > 0
    status, _ = server._http("POST", "/fastdrag/preview", json.dumps({**body, "task": "copy object"}).encode())
    assert status == 200 and server.last_headers["X-FastDrag-Holes"] == "0"
    two = {**body, "points": points_json(DRAG + [((20, 20), (30, 30))])}
    status, err = server._http("POST", "/fastdrag/preview", json.dumps(two).encode())
    assert status == 400 and "takes one drag" in json.loads(err)["error"], err
    # the fill region is read like the mask (alpha: 1 - alpha is set), checked against the picture's size
    server.write_input("fastdrag_objmove_fill.png",
                       _rgba_png(128, 128, lambda x, y: 0 if x >= 96 and y >= 96 else 255))
    server.write_input("fastdrag_objmove_fill64.png", _rgba_png(64, 64, lambda x, y: 0))
    status, _ = server._http("POST", "/fastdrag/preview", json.dumps(
        {**body, "fill_region": {"filename": "fastdrag_objmove_fill.png", "channel": "alpha"}}).encode())
    assert status == 200 and server.last_headers["X-FastDrag-Shift"] == "3,3"
    status, err = server._http("POST", "/fastdrag/preview", json.dumps(
        {**body, "fill_region": {"filename": "fastdrag_objmove_fill64.png"}}).encode())
    assert status == 400 and "fill_region: 64x64 (WxH) does not match the 128x128 image" in json.loads(err)["error"], err


@pytest.mark.parametrize("graph,needle", [
    ("several", "FastDragMoveObject: moving or copying an object takes one drag (handle on the object, target "
                "where it goes), got 2"),
    ("nomask", "FastDragMoveObject: moving or copying an object needs a mask of the object"),
    ("region", "FastDragMoveObject: fill_region is 64x64 (WxH), which does not match the 128x128 image"),
])
def test_refusals_name_the_node_and_the_value(server, graph, needle):
    p = base(server.ckpt_name)
    p.update(_mask("mask", 30, 26, 44, 50))
    drags = DRAG + [((20, 20), (30, 30))] if graph == "several" else DRAG
    p["pts"] = points_node(points_json(drags), mask=None if graph == "nomask" else ("mask", 0))
    p["inv"] = invert_node(strength=STRENGTH)
    region = None
    if graph == "region":
        p["r"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}}
        region = ("r", 0)
    p["mv"] = _move(("inv", 0), ("pts", 0), fill_region=region)
    p["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["mv", 0]}}
    with pytest.raises(PromptError) as e:
        server.run(p)
    assert e.value.node_type == "FastDragMoveObject" and needle in e.value.message, e.value.message
