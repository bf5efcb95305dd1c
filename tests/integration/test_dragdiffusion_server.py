"""DragDiffusion nodes in the real ComfyUI server, on the tiny SD1.5-layout checkpoint (16 attn1
layers, diffusers up_blocks[2] present), 64x64 images, a few inversion steps and drag iterations.

Run: COMFYUI_ROOT=~/.cache/comfy-harness/ComfyUI python -m pytest tests/integration/test_dragdiffusion_server.py
"""

import base64
import json
import math
import os
import re
import socket
import struct
import threading
import time
import urllib.parse
import uuid

import pytest
import torch

from comfy_server import PromptError, pattern_png
from graphs import points_json, points_node, save_node

SIZE = 64          # image px -> latent 8x8, feature grid 32x32
IMG = "dd_test.png"
DRAG = [((20, 22), (36, 30))]  # feature grid (row, col): (11, 10) -> (15, 18)
NEAR = [((20, 22), (22, 23))]  # within 2 feature px: reached at once
LR = 0.01


def load(path):
    return torch.load(path, weights_only=False)


def assert_same_up_to_rounding(a, b, moved, what):
    """``a`` and ``b`` come from the same computation on differently laid-out or differently cached weights.
    With several threads, float32 sums of the UNet are taken in an order that depends on the thread count
    and the weights' memory layout, so the two differ in their last bits, and Adam's normalised step
    (m / sqrt(v)) turns that into up to ~1e-4 on elements whose gradient is near zero. Any difference in
    behaviour (another setting, timestep or weight) changes the result by at least one whole Adam step,
    a sizeable part of ``moved`` (how far the edit moved the latent). So: same shape, and no element
    apart by more than 1% of ``moved``, nor the mean by more than 0.1%."""
    assert a.shape == b.shape and torch.isfinite(a).all() and torch.isfinite(b).all()
    gap, scale = (a - b).abs(), float(moved)
    print(f"{what}: max |a - b| {float(gap.max()):.3g}, mean {float(gap.mean()):.3g}; the edit moved the latent by "
          f"up to {scale:.3g}")
    assert scale > 0, what
    assert float(gap.max()) <= 1e-2 * scale and float(gap.mean()) <= 1e-3 * scale, \
        (what, float(gap.max()), float(gap.mean()), scale)


def dd_base(server) -> dict:
    ckpt = server.add_checkpoint("sd15_layout")
    server.write_input(IMG, pattern_png(SIZE, SIZE))
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a yellow square and a blue disc", "clip": ["ckpt", 1]}},
        "img": {"class_type": "LoadImage", "inputs": {"image": IMG}},
        "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["ckpt", 2]}},
        "inv": {"class_type": "FastDragInvert", "inputs": {"model": ["ckpt", 0], "positive": ["pos", 0],
                                                           "latent": ["enc", 0], "steps": 10, "strength": 0.7,
                                                           "cfg": 1.0, "capture_kv": False}},
    }


def mask_nodes(x, y, w, h):
    return {
        "m0": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": SIZE, "height": SIZE}},
        "m1": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": w, "height": h}},
        "mask": {"class_type": "MaskComposite", "inputs": {"destination": ["m0", 0], "source": ["m1", 0],
                                                            "x": x, "y": y, "operation": "add"}},
    }


def drag_node(latent=("inv", 0), drag=("pts", 0), steps=3, lam=0.1, **extra):
    inputs = {"model": ["ckpt", 0], "positive": ["pos", 0], "latent": list(latent), "drag": list(drag),
              "steps": steps, "learning_rate": LR, "lam": lam, "r_m": 1, "r_p": 3}
    inputs.update({k: list(v) if isinstance(v, tuple) else v for k, v in extra.items()})
    return {"class_type": "DragDiffusionDrag", "inputs": inputs}


def sample_node(latent, reference=("inv", 0), start_layer=10, start_step=0, model=("ckpt", 0)):
    return {"class_type": "DragDiffusionSample", "inputs": {
        "model": list(model), "positive": ["pos", 0], "latent": list(latent), "reference": list(reference),
        "start_step": start_step, "start_layer": start_layer, "cfg": 1.0}}


def edit_node(model=("ckpt", 0), drag=("pts", 0), drag_steps=2, lora_steps=0, **extra):
    """DragDiffusionEdit at the test sizes (10 x 0.7 = 7 steps; a small LoRA when lora_steps > 0)."""
    return {"class_type": "DragDiffusionEdit", "inputs": {
        "model": list(model), "vae": ["ckpt", 2], "positive": ["pos", 0], "image": ["img", 0], "drag": list(drag),
        "steps": 10, "strength": 0.7, "drag_steps": drag_steps, "lora_steps": lora_steps, "cfg": 1.0,
        "lora_batch_size": 1, "lora_rank": 4, **extra}}


def plain_ddim(latent=("inv", 0)):
    return {"class_type": "FastDragSample", "inputs": {"model": ["ckpt", 0], "positive": ["pos", 0],
                                                       "latent": list(latent), "kv": ["inv", 1], "cfg": 1.0,
                                                       "consistency": False}}


def decode(latent):
    return {"class_type": "VAEDecode", "inputs": {"samples": list(latent), "vae": ["ckpt", 2]}}


class Progress:
    """Minimal stdlib websocket client collecting ComfyUI's ``progress`` messages for one node."""

    def __init__(self, server):
        u = urllib.parse.urlparse(server.url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /ws?clientId={server.client_id} HTTP/1.1\r\nHost: {u.netloc}\r\n"
                           f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert b" 101 " in head.split(b"\r\n")[0], head
        self.messages = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def _read(self):
        try:
            while True:
                b0, b1 = self._exact(2)
                n = b1 & 0x7F
                if n == 126:
                    n = struct.unpack(">H", self._exact(2))[0]
                elif n == 127:
                    n = struct.unpack(">Q", self._exact(8))[0]
                payload = self._exact(n)
                if b0 & 0x0F == 1:
                    self.messages.append(json.loads(payload))
        except (OSError, EOFError, ValueError):
            pass

    def close(self):
        self.sock.close()


# -- one prompt holding the main cases -----------------------------------------------------------------


@pytest.fixture(scope="module")
def dd_run(server, tmp_path_factory):
    d = str(tmp_path_factory.mktemp("dd"))
    f = {k: os.path.join(d, k + ".pt") for k in
         ("inv", "drag", "samp", "ref_step", "step1", "noop", "noop_samp", "plain", "same_ref", "past",
          "edit", "near", "mask")}
    p = dd_base(server)
    p.update(mask_nodes(8, 8, 40, 40))
    p["pts"] = points_node(points_json(DRAG, SIZE, SIZE))
    p["pts_mask"] = points_node(points_json(DRAG, SIZE, SIZE), mask=("mask", 0))
    p["pts_near"] = points_node(points_json(NEAR, SIZE, SIZE), mask=("mask", 0))
    p["drag"] = drag_node(drag=("pts_mask", 0), steps=3)
    p["samp"] = sample_node(("drag", 0))
    p["step1"] = drag_node(steps=1)
    p["ref_step"] = {"class_type": "FastDragTestDDFirstStep", "inputs": {
        "model": ["ckpt", 0], "positive": ["pos", 0], "latent": ["inv", 0], "handles": "[[11, 10]]",
        "targets": "[[15, 18]]", "lr": LR, "r_m": 1, "path": f["ref_step"]}}
    p["near"] = drag_node(drag=("pts_near", 0), steps=5, lam=1.0)
    p["plain"] = plain_ddim()
    p["same_ref"] = sample_node(("inv", 0))
    p["past"] = sample_node(("inv", 0), start_layer=16)
    p["edit"] = {"class_type": "DragDiffusionEdit", "inputs": {
        "model": ["ckpt", 0], "vae": ["ckpt", 2], "positive": ["pos", 0], "image": ["img", 0],
        "drag": ["pts_mask", 0], "steps": 10, "strength": 0.7, "drag_steps": 3, "lora_steps": 0, "cfg": 1.0}}
    p["dec_plain"] = decode(("plain", 0))
    p["dec_same"] = decode(("same_ref", 0))
    p["save_inv"] = save_node(f["inv"], latent=("inv", 0))
    p["save_drag"] = save_node(f["drag"], latent=("drag", 0))
    p["save_samp"] = save_node(f["samp"], latent=("samp", 0))
    p["save_step1"] = save_node(f["step1"], latent=("step1", 0))
    p["save_near"] = save_node(f["near"], latent=("near", 0))
    p["save_plain"] = save_node(f["plain"], latent=("plain", 0), image=("dec_plain", 0))
    p["save_same"] = save_node(f["same_ref"], latent=("same_ref", 0), image=("dec_same", 0))
    p["save_past"] = save_node(f["past"], latent=("past", 0))
    p["save_edit"] = save_node(f["edit"], latent=("edit", 1), image=("edit", 0))
    p["save_mask"] = save_node(f["mask"], mask=("mask", 0))
    p["points_out"] = {"class_type": "PreviewAny", "inputs": {"source": ["drag", 1]}}
    p["pts_again"] = {"class_type": "FastDragPoints", "inputs": {"image": ["img", 0], "points": ["drag", 1]}}
    p["pts_again_out"] = {"class_type": "PreviewAny", "inputs": {"source": ["pts_again", 0]}}
    ws = Progress(server)
    try:
        entry = server.run(p)
        time.sleep(0.2)
    finally:
        ws.close()
    out = {k: load(v) for k, v in f.items() if os.path.exists(v)}
    return entry, out, ws.messages


def drag_text(server, entry, node):
    return " ".join(server.texts(entry, node))


def test_drag_runs_and_reports(server, dd_run):
    entry, out, _ = dd_run
    text = drag_text(server, entry, "drag")
    assert "t=601: 3 iterations, 3 Adam steps" in text, text
    assert "[[11, 10]] ->" in text and "targets [[15, 18]]" in text and "32x32 feature grid" in text
    inv = drag_text(server, entry, "inv")  # capture_kv off: no K/V store, said so (the family part may change)
    assert re.search(r"inverted to t=601 in 7 steps on [^;]+; K/V capture off; steps=10 strength=0.7", inv), inv
    z0, z = out["inv"]["latent"], out["drag"]["latent"]
    assert z.shape == z0.shape and torch.isfinite(z).all()
    assert out["drag"]["timesteps"] == out["inv"]["timesteps"]  # schedule tag travels on
    # three Adam steps of lr 0.01 on z = x / sqrt(sigma^2 + 1)
    sigma = out["inv"]["sigmas"][0]
    dz = (z - z0) * 0.18215 / math.sqrt(sigma * sigma + 1)
    assert 0.005 < float(dz.abs().max()) <= 4 * LR  # Adam steps are about lr each, a little more early on


def test_first_step_matches_float64_direct_unet_reference(dd_run):
    """DragDiffusionDrag with steps=1 = one Adam step = z - lr g/(|g| + eps); the reference computes g
    in float64 with the UNet called directly (features by a forward hook) and the loss from the equation."""
    _, out, _ = dd_run
    z0, z1, ref = out["inv"]["latent"], out["step1"]["latent"], out["ref_step"]["latent"]
    sigma = out["inv"]["sigmas"][0]
    to_z = 0.18215 / math.sqrt(sigma * sigma + 1)
    step_node, step_ref = (z1 - z0) * to_z, (ref - z0) * to_z
    g = out["ref_step"]["grad"].float()
    assert out["ref_step"]["loss"] > 0
    big = g.abs() > 1e-6 * g.abs().max()  # away from float32 noise the step is -lr * sign(g)
    assert big.float().mean() > 0.5
    agree = (step_node - step_ref).abs() < 1e-3 * LR
    assert agree[big].float().mean() > 0.99, float(agree[big].float().mean())
    torch.testing.assert_close(step_node[big], -LR * torch.sign(g[big]), rtol=0, atol=1e-3 * LR)


def test_points_output_is_the_tracked_handles(server, dd_run):
    entry, _, _ = dd_run
    pts = json.loads(entry["outputs"]["points_out"]["text"][0])
    assert pts["version"] == 1 and (pts["width"], pts["height"]) == (SIZE, SIZE)
    text = drag_text(server, entry, "drag")
    final = json.loads(text.split("->")[1].split(", targets")[0])
    (drag,) = pts["drags"]
    assert drag["target"] == [36.0, 30.0]
    # feature grid (row, col) -> image (x, y) = (2 col, 2 row) on a 64 px image
    assert drag["handle"] == [2.0 * final[0][1], 2.0 * final[0][0]]
    # the same JSON feeds FastDragPoints again (e.g. to continue the drag from where tracking ended)
    spec = entry["outputs"]["pts_again_out"]["text"][0]
    assert f"handles=[({2.0 * final[0][1]}, {2.0 * final[0][0]})], targets=[(36.0, 30.0)]" in spec, spec


def test_progress_bar_counts_iterations(server, dd_run):
    entry, _, messages = dd_run
    prompt_ids = set(entry["prompt"][1:2])
    prog = [m["data"] for m in messages if m.get("type") == "progress" and m["data"].get("node") == "drag"
            and (not prompt_ids or m["data"].get("prompt_id") in prompt_ids)]
    assert prog, [m.get("type") for m in messages][:20]
    assert {d["max"] for d in prog} == {3} and [d["value"] for d in prog] == [1, 2, 3]


def test_sample_with_start_layer_past_the_last_block_is_plain_ddim(server, dd_run):
    entry, out, _ = dd_run
    assert torch.equal(out["past"]["latent"], out["plain"]["latent"])
    assert "plain DDIM" in drag_text(server, entry, "past")


def test_reference_equal_to_latent_gives_plain_ddim(server, dd_run):
    """Blocks 10-15 controlled, but the edited branch equals the reference: its K/V are its own."""
    entry, out, _ = dd_run
    torch.testing.assert_close(out["same_ref"]["latent"], out["plain"]["latent"], rtol=1e-4, atol=1e-4)
    assert "blocks 10-15 of 16 from step 0: 42 controlled attention calls" in drag_text(server, entry, "same_ref")


def test_control_changes_the_edited_branch(server, dd_run):
    entry, out, _ = dd_run
    assert "blocks 10-15 of 16 from step 0: 42 controlled" in drag_text(server, entry, "samp")
    samp = out["samp"]["latent"]
    assert samp.shape == out["plain"]["latent"].shape and torch.isfinite(samp).all()
    assert float((samp - out["plain"]["latent"]).abs().max()) > 1e-3


def test_handle_on_target_keeps_the_plain_reconstruction(server, dd_run):
    """Handle within 2 feature px of the target, a mask and lam = 1: the loop stops before any step,
    the latent is unchanged, and DragDiffusionSample of an unchanged latent (reference = latent)
    decodes to the plain DDIM reconstruction."""
    entry, out, _ = dd_run
    assert "1 iterations, 0 Adam steps, handles reached their targets" in drag_text(server, entry, "near")
    assert torch.equal(out["near"]["latent"], out["inv"]["latent"])
    diff = (out["same_ref"]["image"] - out["plain"]["image"]).abs()
    assert float(diff.max()) < 2e-3, float(diff.max())


def test_drag_computes_no_weight_gradient(server, outdir):
    """Only z_t needs a gradient. ComfyUI's UNet weights require grad (inference tensors on the CPU; after
    a GPU load outside inference mode, ordinary tensors, as FastDragTestTrainableWeights makes them):
    the drag must neither compute their gradients nor leave a .grad on any of them, hand every weight
    back as it found it (same tensors, same flags), and the result is the same."""
    p = dd_base(server)
    p["pts"] = points_node(points_json(DRAG, SIZE, SIZE))
    f = {k: os.path.join(outdir, f"grads_{k}.pt") for k in ("t", "plain", "lt", "lp", "before", "inv")}
    p["trainable"] = {"class_type": "FastDragTestTrainableWeights", "inputs": {"model": ["ckpt", 0]}}
    p["before"] = {"class_type": "FastDragTestParamState", "inputs": {"model": ["ckpt", 0], "path": f["before"]}}
    p["drag_t"] = drag_node(steps=2, model=("trainable", 0))
    p["drag"] = drag_node(steps=2, model=("before", 0))
    p["g_t"] = {"class_type": "FastDragTestParamGrads", "inputs": {"model": ["trainable", 0], "latent": ["drag_t", 0],
                                                                  "path": f["t"]}}
    p["g"] = {"class_type": "FastDragTestParamGrads", "inputs": {"model": ["ckpt", 0], "latent": ["drag", 0],
                                                                "path": f["plain"]}}
    p["s_t"] = save_node(f["lt"], latent=("drag_t", 0))
    p["s"] = save_node(f["lp"], latent=("drag", 0))
    p["s_inv"] = save_node(f["inv"], latent=("inv", 0))
    entry = server.run(p)
    t, plain = load(f["t"]), load(f["plain"])
    assert t["total"] == plain["total"] > 100
    assert t["with_grad"] == 0 and plain["with_grad"] == 0, (t, plain)
    assert t["requires_grad"] == t["total"] and t["inference"] == 0  # its weights were handed back as they were
    # ComfyUI's own model: every parameter the same tensor with the same flags as before the drag (on this
    # CPU mostly inference tensors; weights an earlier LoRA patch put back are ordinary ones)
    before = load(f["before"])
    assert plain["params"] == before["params"] and plain["inference"] > 0
    for node in ("drag_t", "drag"):
        assert "UNet weights requiring grad in the loop: 0 of" in drag_text(server, entry, node)
    lt, lp = load(f["lt"])["latent"], load(f["lp"])["latent"]
    assert_same_up_to_rounding(lt, lp, (lp - load(f["inv"])["latent"]).abs().max(), "trainable vs inference weights")


def test_edit_expands_into_the_stage_graph(dd_run):
    """DragDiffusionEdit (lora_steps 0) = VAEEncode -> FastDragInvert -> DragDiffusionDrag ->
    DragDiffusionSample -> VAEDecode with the same settings."""
    _, out, _ = dd_run
    edit, samp = out["edit"]["latent"], out["samp"]["latent"]
    assert_same_up_to_rounding(edit, samp, (samp - out["plain"]["latent"]).abs().max(), "edit vs stages")
    assert out["edit"]["image"].shape == (1, SIZE, SIZE, 3)


def check_edit_summary_stages(entry, edit_id):
    """DragDiffusionEdit shows one summary line per stage on the canvas (issue 14.3): its expanded stage
    nodes' texts (delivered to it as their display node) are sorted into exactly the stages LoRA,
    inversion, drag, sampling by the front end's own classifier (web/js/fastdrag_stages.js, run in node)."""
    import json
    import shutil
    import subprocess

    texts = [t for nid, out in entry["outputs"].items()
             if entry.get("meta", {}).get(nid, {}).get("display_node") == edit_id for t in out.get("text", [])]
    node = shutil.which("node")
    if node is None:
        from comfy_server import skip_or_fail
        skip_or_fail("node is not installed (the summary-stage check runs the front end's classifier)")
    stages = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "web", "js", "fastdrag_stages.js")
    script = (f"import {{ stageOf }} from {json.dumps('file://' + stages)};"
              "const texts = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
              "console.log(JSON.stringify(texts.map(stageOf)));")
    script = script.replace("require('fs')", "(await import('node:fs')).default")
    out = subprocess.run([node, "--input-type=module", "-e", script], input=json.dumps(texts),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert sorted(json.loads(out.stdout)) == ["dragged", "inverted", "lora", "sampled"], (texts, out.stdout)


def test_edit_with_lora_and_redrag_from_the_cache(server, outdir):
    """DragDiffusionEdit with the identity LoRA differs from the edit without it. A re-drag (only the points
    change) takes the LoRA and both inversions from ComfyUI's cache: no LoRA training, no inversion, two
    drags and samplings (the LoRA node is an output node inside the expansion: it must not re-run)."""
    p = dd_base(server)
    p["pts"] = points_node(points_json(DRAG, SIZE, SIZE))
    p["edit"] = edit_node(lora_steps=2)
    p["edit0"] = edit_node(lora_steps=0)
    f1, f0 = os.path.join(outdir, "lora.pt"), os.path.join(outdir, "nolora.pt")
    p["s1"] = save_node(f1, latent=("edit", 1))
    p["s0"] = save_node(f0, latent=("edit0", 1))
    runs = []
    for drag in (DRAG, [((20, 22), (30, 36))]):
        p["pts"] = points_node(points_json(drag, SIZE, SIZE))
        before = len(server.log_text())
        entry = server.run(p)
        if not runs:
            check_edit_summary_stages(entry, "edit")
        log = server.log_text()[before:]
        runs.append(({k: log.count(f"[FastDrag] {k}") for k in
                      ("DragDiffusionLoRA: rank-4 LoRA", "FastDragInvert: inverted", "DragDiffusionDrag: t=601",
                       "DragDiffusionSample: t=601")}, load(f1)["latent"], load(f0)["latent"]))
    (first, a, b), (again, a2, b2) = runs
    print("log lines of the first run:", first, "and of the re-drag:", again)
    assert torch.isfinite(a).all() and not torch.equal(a, b)
    assert first["DragDiffusionLoRA: rank-4 LoRA"] == 1 and first["FastDragInvert: inverted"] == 2
    assert again == {"DragDiffusionLoRA: rank-4 LoRA": 0, "FastDragInvert: inverted": 0,
                     "DragDiffusionDrag: t=601": 2, "DragDiffusionSample: t=601": 2}
    assert not torch.equal(a, a2) and not torch.equal(b, b2)  # the new points were used


def test_lcm_sampling_runs_as_plain_eps(server, outdir):
    """ModelSamplingDiscrete(lcm) in front of the model: like FastDragInvert, the DragDiffusion nodes (LoRA,
    drag, sample) run the UNet as the plain eps model on the 1000-step table, so the drag's timestep is
    the latent's (t = 601) and the whole DragDiffusionEdit equals the one without the LCM node."""
    p = dd_base(server)
    p["lcm"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["ckpt", 0], "sampling": "lcm",
                                                                 "zsnr": False}}
    p["pts"] = points_node(points_json(DRAG, SIZE, SIZE))
    p["e"] = edit_node(lora_steps=1)
    p["e_lcm"] = edit_node(model=("lcm", 0), lora_steps=1)
    f = {k: os.path.join(outdir, f"{k}.pt") for k in ("e", "e_lcm")}
    for k in f:
        p["s_" + k] = save_node(f[k], latent=(k, 1))
        p["p_" + k] = {"class_type": "PreviewAny", "inputs": {"source": [k, 2]}}
    f_enc = os.path.join(outdir, "enc.pt")
    p["s_enc"] = save_node(f_enc, latent=("enc", 0))
    before = len(server.log_text())
    entry = server.run(p)
    log = server.log_text()[before:]
    plain, lcm = load(f["e"])["latent"], load(f["e_lcm"])["latent"]
    # the LCM node's 50-entry table or boundary condition would change every step: far more than rounding
    assert_same_up_to_rounding(plain, lcm, (plain - load(f_enc)["latent"]).abs().max(), "LCM vs plain")
    assert entry["outputs"]["p_e"]["text"] == entry["outputs"]["p_e_lcm"]["text"]  # same tracked points
    note = "LCM sampling detected: FastDrag runs the UNet as a plain eps model on the 1000-step DDIM schedule"
    for node in ("FastDragInvert", "DragDiffusionDrag", "DragDiffusionSample"):
        assert log.count(f"{node}: {note}") == 1, (node, log[-3000:])
    assert log.count("DragDiffusionDrag: t=601:") == 2


@pytest.mark.parametrize("case", ["edm_drag", "flow_sample"])
def test_other_families_are_refused_before_any_work(server, case):
    """The model rule of the DragDiffusion nodes is the FastDrag nodes' one without SDXL: EDM and flow
    sampling are refused by name before any UNet call of the node (SDXL and SD2.x-v:
    test_model_families.py, where those models are loaded anyway)."""
    p = dd_base(server)
    p["pts"] = points_node(points_json(DRAG, SIZE, SIZE))
    if case == "edm_drag":
        p["ms"] = {"class_type": "ModelSamplingContinuousEDM", "inputs": {
            "model": ["ckpt", 0], "sampling": "eps", "sigma_max": 120.0, "sigma_min": 0.002}}
        p["x"] = drag_node(model=("ms", 0))
        expect = ("DragDiffusionDrag", "DragDiffusionDrag: this SD1.x model uses continuous-time EDM sampling")
    elif case == "flow_sample":
        p["ms"] = {"class_type": "ModelSamplingSD3", "inputs": {"model": ["ckpt", 0], "shift": 3.0}}
        p["x"] = sample_node(("inv", 0), model=("ms", 0))
        expect = ("DragDiffusionSample", "DragDiffusionSample: this SD1.x model uses flow-matching sampling")
    p["out"] = {"class_type": "PreviewAny", "inputs": {"source": ["x", 0]}}
    before = len(server.log_text())
    with pytest.raises(PromptError) as exc:
        server.run(p)
    log = server.log_text()[before:]
    err = exc.value
    assert (err.node_id, err.node_type) == ("x", expect[0]) and expect[1] in err.message, err.message
    assert "DragDiffusion supports SD1.x and SD2.x (eps and v-prediction) checkpoints" in err.message, err.message
    for line in ("DragDiffusionDrag: t=", "DragDiffusionSample: t="):
        assert line not in log, line


def test_edit_refuses_a_unet_without_the_feature_block_before_any_work(server):
    """A UNet too shallow for up_blocks[2] (the harness's tiny SD1.5: 2 decoder levels) is refused by
    DragDiffusionEdit itself, naming the block, before the LoRA training and the inversion ran (it used
    to fail in DragDiffusionDrag after both)."""
    p = dd_base(server)
    for k in ("ckpt",):
        p[k]["inputs"]["ckpt_name"] = server.ckpt_name  # the session's tiny sd15
    p["pts"] = points_node(points_json(DRAG, SIZE, SIZE))
    p["x"] = edit_node(lora_steps=2)
    p["out"] = {"class_type": "PreviewAny", "inputs": {"source": ["x", 2]}}
    del p["inv"]
    before = len(server.log_text())
    with pytest.raises(PromptError) as exc:
        server.run(p)
    log = server.log_text()[before:]
    err = exc.value
    assert (err.node_id, err.node_type) == ("x", "DragDiffusionEdit"), (err.node_id, err.node_type, err.message)
    assert "DragDiffusionEdit: up block 2 is not available on this UNet: it has 2 decoder levels" in err.message
    for line in ("DragDiffusionLoRA:", "FastDragInvert:", "DragDiffusionDrag: t="):
        assert line not in log, (line, log[-2000:])


def test_reference_control_chains_another_packs_attn1_replace(server, outdir):
    """Another pack's attn1 replace on the decoder layers (per site or per block) keeps running under
    DragDiffusionSample: on the controlled layers (blocks 10-15 = output blocks 6-11) it is chained and
    receives the K/V the control chose (the edited half's K = the reference half's), on the others its
    own; the result equals the sampling without it (it computes plain attention)."""
    p = dd_base(server)
    p["pts"] = points_node(points_json(DRAG, SIZE, SIZE))
    p["warp"] = {"class_type": "FastDragWarp", "inputs": {"latent": ["inv", 0], "drag": ["pts", 0],
                                                          "handle_on_cell": "paper"}}
    p["fill"] = {"class_type": "FastDragBNNI", "inputs": {"latent": ["warp", 0], "null_mask": ["warp", 1],
                                                          "fill": "bnni"}}
    p["s_plain"] = sample_node(("fill", 0))
    f = {"plain": os.path.join(outdir, "plain.pt")}
    p["save_plain"] = save_node(f["plain"], latent=("s_plain", 0))
    for mode in ("site", "block"):
        tag = f"dd-{mode}-{uuid.uuid4().hex[:8]}"
        f[mode], f[mode + "_calls"] = os.path.join(outdir, f"{mode}.pt"), os.path.join(outdir, f"{mode}_calls.pt")
        p["o_" + mode] = {"class_type": "FastDragTestAttn1Replace", "inputs": {"model": ["ckpt", 0], "tag": tag,
                                                                              "mode": mode, "scale": 1.0}}
        p["s_" + mode] = sample_node(("fill", 0), model=("o_" + mode, 0))
        p["r_" + mode] = {"class_type": "FastDragTestAttn1Report", "inputs": {"latent": ["s_" + mode, 0],
                                                                             "tag": tag, "path": f[mode + "_calls"]}}
        p["save_" + mode] = save_node(f[mode], latent=("s_" + mode, 0))
    entry = server.run(p)
    plain = load(f["plain"])["latent"]
    for mode in ("site", "block"):
        calls = load(f[mode + "_calls"])
        assert calls["calls"] == 9 * 7, calls["calls"]  # 9 decoder self-attention layers x 7 steps
        controlled = [eq for blk, eq in zip(calls["blocks"], calls["k_halves_equal"]) if blk[1] >= 6]
        free = [eq for blk, eq in zip(calls["blocks"], calls["k_halves_equal"]) if blk[1] < 6]
        assert len(controlled) == 6 * 7 and all(controlled), (mode, controlled)
        assert len(free) == 3 * 7 and not any(free), (mode, free)
        assert torch.equal(load(f[mode])["latent"], plain), mode
        text = drag_text(server, entry, "s_" + mode)
        assert "42 controlled attention calls" in text and "hid the control" not in text, text


def test_mixed_graph_fastdrag_warp_then_dragdiffusion(server, outdir):
    """FastDrag's warp + BNNI, then a few DragDiffusion iterations with the unwarped latent as
    reference, then reference-controlled sampling: the stage types fit together."""
    p = dd_base(server)
    p["pts"] = points_node(points_json(DRAG, SIZE, SIZE))
    p["warp"] = {"class_type": "FastDragWarp", "inputs": {"latent": ["inv", 0], "drag": ["pts", 0],
                                                          "handle_on_cell": "paper"}}
    p["fill"] = {"class_type": "FastDragBNNI", "inputs": {"latent": ["warp", 0], "null_mask": ["warp", 1],
                                                          "fill": "bnni"}}
    p["drag"] = drag_node(latent=("fill", 0), steps=2, reference=("inv", 0))
    p["samp"] = sample_node(("drag", 0))
    path = os.path.join(outdir, "mix.pt")
    p["save"] = save_node(path, latent=("samp", 0))
    entry = server.run(p)
    assert torch.isfinite(load(path)["latent"]).all()
    text = drag_text(server, entry, "drag")
    assert "t=601:" in text and "iterations" in text


def test_cancel_stops_within_an_iteration(server):
    p = dd_base(server)
    p["pts"] = points_node(points_json(DRAG, SIZE, SIZE))
    server.run({k: v for k, v in p.items()} | {"keep": save_node("/dev/null", latent=("inv", 0))})  # cache inversion
    p["drag"] = drag_node(steps=500)
    p["out"] = {"class_type": "PreviewAny", "inputs": {"source": ["drag", 1]}}
    ws = Progress(server)
    try:
        pid = server.submit(p)
        t0 = time.time()
        while not any(m.get("type") == "progress" and m["data"].get("node") == "drag" and m["data"]["value"] >= 2
                      for m in ws.messages):
            assert time.time() - t0 < 120, "drag did not start"
            time.sleep(0.02)
        ticks = [m["data"]["value"] for m in ws.messages if m.get("type") == "progress"
                 and m["data"].get("node") == "drag"]
        per_iter = (time.time() - t0) / max(ticks)
        t_int = time.time()
        server.interrupt()
        entry = server.wait(pid, raise_errors=False)
        stopped_after = time.time() - t_int
    finally:
        ws.close()
    kinds = [k for k, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, kinds
    assert stopped_after < 1.5 * per_iter + 1.0, (stopped_after, per_iter)


@pytest.mark.parametrize("case", ["no_tag", "no_tag_sample", "outside", "empty_mask", "tiny_mask", "steps0"])
def test_bad_input_names_node_and_value(server, case):
    p = dd_base(server)
    p["pts"] = points_node(points_json(DRAG, SIZE, SIZE))
    expect_node, pattern = "drag", None
    if case == "no_tag":
        p["drag"] = drag_node(latent=("enc", 0))
        expect_type, pattern = "DragDiffusionDrag", "DragDiffusionDrag: latent has no FastDrag schedule tag"
    elif case == "no_tag_sample":
        p["drag"] = sample_node(("inv", 0), reference=("enc", 0))
        expect_type, pattern = "DragDiffusionSample", "DragDiffusionSample: reference has no FastDrag schedule tag"
    elif case == "outside":
        p["pts"] = points_node(points_json([((20, 22), (70, 30))], SIZE, SIZE))
        p["drag"] = drag_node()
        expect_node, expect_type, pattern = "pts", "FastDragPoints", "target (70, 30) is outside the 64x64 image"
    elif case == "empty_mask":
        p.update(mask_nodes(0, 0, 1, 1))
        p["mask"]["inputs"]["operation"] = "multiply"
        p["pts"] = points_node(points_json(DRAG, SIZE, SIZE), mask=("mask", 0))
        p["drag"] = drag_node()
        expect_node, expect_type, pattern = "pts", "FastDragPoints", "the mask is empty"
    elif case == "tiny_mask":
        p.update(mask_nodes(1, 1, 1, 1))  # one pixel: no latent cell by the nearest rule
        p["pts"] = points_node(points_json(DRAG, SIZE, SIZE), mask=("mask", 0))
        p["drag"] = drag_node()
        # refused where the points are made, before any UNet call (the shared validation of FastDragPoints)
        expect_node, expect_type = "pts", "FastDragPoints"
        pattern = "FastDragPoints: the mask (1 px) covers no latent cell of the 8x8 grid"
    else:
        p["drag"] = drag_node(steps=0)
        expect_type = "DragDiffusionDrag"
    p["out"] = {"class_type": "PreviewAny", "inputs": {"source": ["drag", 0]}}
    with pytest.raises(PromptError) as exc:
        server.run(p)
    err = exc.value
    assert err.node_type == expect_type, (err.node_type, err.message)
    if case == "steps0":
        assert err.kind == "validation" and "steps" in err.message and "0" in err.message, err.message
    else:
        assert err.node_id == expect_node and pattern in err.message, err.message


WORKFLOWS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "workflows")
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "randomize", "increment", "decrement"}


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """The API prompt the front end makes of a UI-format workflow: widget values in the order of the
    node's widget inputs (links take their input's place); a seed's control value is skipped."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] == "Note":
            continue
        info = object_info[node["type"]]["input"]
        specs = list(info.get("required", {}).items()) + list(info.get("optional", {}).items())
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        inputs = {name: [str(links[lk][1]), links[lk][2]] for name, lk in linked.items()}
        values = list(node.get("widgets_values") or [])
        for name, spec in specs:
            kind = spec[0] if isinstance(spec[0], str) else "COMBO"
            if kind not in WIDGET_TYPES or name in linked or not values:
                continue
            inputs[name] = values.pop(0)
            if kind == "INT" and name in ("seed", "noise_seed") and values and values[0] in CONTROL_VALUES:
                values.pop(0)
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


@pytest.mark.parametrize("name", ["DragDiffusion edit in one node.json", "FastDrag warp then DragDiffusion.json"])
def test_shipped_workflow_runs(server, outdir, name):
    """The shipped UI workflow, converted as the front end does, runs on the tiny model with smaller
    settings (10 DDIM steps, 2 drag iterations, 2 LoRA steps of batch 1); it ships the official ones."""
    with open(os.path.join(WORKFLOWS, name)) as f:
        wf = json.load(f)
    types = {n["type"] for n in wf["nodes"]} - {"Note"}
    info = {t: server.get(f"/object_info/{t}")[t] for t in types}
    prompt = ui_to_api(wf, info)
    dd_base(server)  # test checkpoint and image
    for node in prompt.values():
        i, t = node["inputs"], node["class_type"]
        if t == "CheckpointLoaderSimple":
            i["ckpt_name"] = server.add_checkpoint("sd15_layout")
        elif t == "LoadImage":
            i["image"] = IMG
        elif t == "FastDragPoints":
            i["points"] = points_json(DRAG, SIZE, SIZE)
        elif t == "FastDragInvert":
            assert (i["steps"], i["strength"], i["capture_kv"]) == (50, 0.7, False), i
            i["steps"] = 10
        elif t == "DragDiffusionDrag":
            i["steps"] = 2
        elif t == "DragDiffusionEdit":
            assert (i["steps"], i["strength"], i["drag_steps"], i["lora_steps"], i["lora_batch_size"]) == (50, 0.7, 80, 80, 4)
            i.update(steps=10, drag_steps=2, lora_steps=2, lora_batch_size=1)
        elif t == "SaveImage":
            i["filename_prefix"] = "dd_wf"
    before = len(server.log_text())
    entry = server.run(prompt)
    images = [o for o in entry["outputs"].values() if o.get("images")]
    assert images, entry["outputs"]
    log = server.log_text()[before:]
    assert log.count("DragDiffusionDrag: t=601") == 1
    if "DragDiffusionEdit" in types:  # the LoRA step ran
        assert log.count("DragDiffusionLoRA: rank-16 LoRA on 128 attention projections, 2 steps x batch 1") == 1, log
