"""Half precision in the real ComfyUI server (issue 16, item 1): every node runs end to end with
``--bf16-unet`` and with ``--fp16-unet`` (FastDrag stages and FastDragEdit, DragDiffusionEdit, which
expands into DragDiffusionLoRA -> FastDragInvert -> DragDiffusionDrag -> DragDiffusionSample, and
DIFT's DragMeanDistance), with finite results, and FastDrag agreeing with the float32 result of the
session server.

What the flags mean on a CPU (comfy/model_management.py, checked in the server log): ``--bf16-unet``
stores the UNet in bfloat16 and computes in it; ``--fp16-unet`` stores float16 weights and casts them
to float32 to compute (a CPU never computes in fp16). One server per flag, started once for this module
(the flag is global); each group of nodes is its own prompt, so one failing group hides no other.

Tolerances of FastDrag against float32 (relative L2 error of the edited latent), from the unit
roundoff u of the dtype the UNet is computed or stored in:

* bf16 compute, u = 2^-8 = 3.9e-3: at most 8u = 3.1e-2. Measured 9.4e-3 (2.4u) for 2 inversion and
  2 sampling steps; every UNet evaluation adds rounding of order u, and DDIM passes it on without
  amplifying it (FastDrag's warp and BNNI only move and copy latent cells).
* fp16 storage with float32 compute, the test checkpoints' UNet already stored in float16 (read from
  the file's header): the weights are exact, so the result is float32's up to operation order: 1e-5.
  A float32 checkpoint (``FASTDRAG_TEST_CKPT``) or a GPU (fp16 compute): rounding of order u = 2^-11
  per evaluation, 8u = 3.9e-3.

DragDiffusion is not compared with float32: its Adam steps normalise the gradient (a small change of
the gradient can flip an update's sign), so half precision changes the edit by more than rounding
(measured: relative error 0.15 after one drag step in bf16). Its results must be finite.

Run: COMFYUI_ROOT=~/.cache/comfy-harness/ComfyUI python3 -m pytest -q tests/integration/test_precision_server.py -s
"""

import json
import math
import os
import struct

import pytest
import torch

from comfy_server import ComfyServer, NoTestCheckpoint, PromptError, pattern_png, skip_or_fail
from graphs import points_json, warp_fill_sample_nodes

SIZE = 64
IMG = "precision.png"
DRAG = [((20, 22), (34, 30))]
FLAGS = {"--bf16-unet": "torch.bfloat16", "--fp16-unet": "torch.float16"}
U = {"bf16": 2.0 ** -8, "fp16": 2.0 ** -11}


def base(ckpt: str) -> dict:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a yellow square", "clip": ["ckpt", 1]}},
        "img": {"class_type": "LoadImage", "inputs": {"image": IMG}},
        "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["ckpt", 2]}},
        "pts": {"class_type": "FastDragPoints", "inputs": {"image": ["img", 0],
                                                           "points": points_json(DRAG, SIZE, SIZE)}},
    }


def save(path, **tensors) -> dict:
    return {"class_type": "FastDragTestSave", "inputs": {"path": path, **{k: list(v) for k, v in tensors.items()}}}


def prompts(ckpt: str, out: str) -> dict:
    """{group: (API prompt, {name: saved file})}: the nodes of each group, at the smallest sizes."""
    f = lambda name: os.path.join(out, name + ".pt")  # noqa: E731
    fd = base(ckpt)
    fd["inv"] = {"class_type": "FastDragInvert", "inputs": {"model": ["ckpt", 0], "positive": ["pos", 0],
                                                            "latent": ["enc", 0], "steps": 4, "strength": 0.5,
                                                            "cfg": 1.0}}
    fd.update(warp_fill_sample_nodes())
    fd["edit"] = {"class_type": "FastDragEdit", "inputs": {
        "model": ["ckpt", 0], "vae": ["ckpt", 2], "positive": ["pos", 0], "image": ["img", 0], "drag": ["pts", 0],
        "steps": 4, "strength": 0.5, "cfg": 1.0}}
    for node, latent in (("inv", ("inv", 0)), ("warp", ("warp", 0)), ("bnni", ("bnni", 0)), ("samp", ("samp", 0))):
        fd[f"save_{node}"] = save(f(f"fastdrag_{node}"), latent=latent)
    fd["save_edit"] = save(f("fastdrag_edit"), latent=("edit", 1), image=("edit", 0))

    dd = base(ckpt)
    dd["edit"] = {"class_type": "DragDiffusionEdit", "inputs": {
        "model": ["ckpt", 0], "vae": ["ckpt", 2], "positive": ["pos", 0], "image": ["img", 0], "drag": ["pts", 0],
        "steps": 4, "strength": 0.5, "drag_steps": 1, "lora_steps": 1, "cfg": 1.0, "lora_batch_size": 1,
        "lora_rank": 4, "seed": 0}}
    dd["save_edit"] = save(f("dragdiffusion_edit"), latent=("edit", 1), image=("edit", 0))

    dift = {k: v for k, v in base(ckpt).items() if k in ("ckpt", "img")}
    dift["md"] = {"class_type": "DragMeanDistance", "inputs": {
        "model": ["ckpt", 0], "clip": ["ckpt", 1], "vae": ["ckpt", 2], "source": ["img", 0], "edited": ["img", 0],
        "points": points_json(DRAG, SIZE, SIZE), "prompt": "a yellow square", "ensemble": 1}}
    return {"fastdrag": fd, "dragdiffusion": dd, "dift": dift}


def run_all(server, out: str, only=None) -> dict:
    """Queues every group (or those in ``only``) at once, then waits:
    {"results": {group: history entry or PromptError}, "files": {name: saved tensors}}."""
    os.makedirs(out, exist_ok=True)
    server.write_input(IMG, pattern_png(SIZE, SIZE))
    groups = {k: v for k, v in prompts(server.add_checkpoint("sd15_layout"), out).items() if not only or k in only}
    ids = {}
    for name, p in groups.items():
        try:
            ids[name] = server.submit(p)
        except PromptError as e:
            ids[name] = e
    results = {}
    for name, pid in ids.items():
        if not isinstance(pid, str):
            results[name] = pid
            continue
        try:
            results[name] = server.wait(pid, timeout=600)
        except PromptError as e:
            results[name] = e
    files = {os.path.basename(p)[:-3]: torch.load(os.path.join(out, p), weights_only=False)
             for p in os.listdir(out) if p.endswith(".pt")}
    return {"results": results, "files": files}


def unet_stored_dtypes(path: str) -> set[str]:
    """The dtypes of a checkpoint's UNet tensors, from its safetensors header (stdlib)."""
    with open(path, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(n))
    return {v["dtype"] for k, v in header.items() if k.startswith("model.diffusion_model.")}


@pytest.fixture(scope="module")
def fp32(server, tmp_path_factory):
    """The float32 reference from the session server (FastDrag and DIFT; DragDiffusion is not compared)."""
    return run_all(server, str(tmp_path_factory.mktemp("fp32")), only=("fastdrag", "dift"))


@pytest.fixture(scope="module", params=list(FLAGS))
def half(request, server, fp32, tmp_path_factory):
    """A server started with the flag (after the float32 reference: one server of ours at a time in
    this module besides the session's), its results, and the run's facts."""
    flag = request.param
    try:
        srv = ComfyServer(server.root, extra_args=[flag])
    except NoTestCheckpoint as e:
        skip_or_fail(str(e))
    try:
        srv.wait_ready()
        out = run_all(srv, str(tmp_path_factory.mktemp(flag.strip("-"))))
        out["log"] = srv.log_text()
        ckpt = os.path.realpath(os.path.join(srv.base, "models", "checkpoints", srv.add_checkpoint("sd15_layout")))
        out["stored"] = unet_stored_dtypes(ckpt) if ckpt.endswith(".safetensors") else set()
    finally:
        srv.cleanup()
    out["flag"] = flag
    return out


def ran(out, group):
    r = out["results"][group]
    if isinstance(r, PromptError):
        pytest.fail(f"{out['flag']}: {group} failed: {r}", pytrace=False)
    return r


def finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t.float()).all())


def rel_l2(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.double(), ref.double()
    return float((a - ref).norm() / ref.norm())


def test_flag_took_effect(half):
    """The server really stored the UNet in the half dtype (else every other test here is vacuous)."""
    want = FLAGS[half["flag"]]
    assert f"model weight dtype {want}" in half["log"], (half["flag"], [l for l in half["log"].splitlines()
                                                                         if "weight dtype" in l])


def test_fastdrag_finite_and_agrees_with_fp32(half, fp32):
    ran(half, "fastdrag")
    ran(fp32, "fastdrag")
    files, ref = half["files"], fp32["files"]
    for stage in ("inv", "warp", "bnni", "samp", "edit"):
        assert finite(files[f"fastdrag_{stage}"]["latent"]), (half["flag"], stage)
    assert finite(files["fastdrag_edit"]["image"])
    assert torch.equal(files["fastdrag_edit"]["latent"], files["fastdrag_samp"]["latent"])  # the same stages
    kind = "bf16" if half["flag"] == "--bf16-unet" else "fp16"
    fp16_exact = (kind == "fp16" and half["stored"] == {"F16"}
                  and os.environ.get("FASTDRAG_TEST_DEVICE", "cpu") == "cpu")
    tol = 1e-5 if fp16_exact else 8 * U[kind]
    for stage in ("inv", "samp"):
        err = rel_l2(files[f"fastdrag_{stage}"]["latent"], ref[f"fastdrag_{stage}"]["latent"])
        print(f"\n{half['flag']} FastDrag {stage}: relative L2 error vs float32 {err:.2e} (tolerance {tol:.1e}), "
              f"max abs {float((files[f'fastdrag_{stage}']['latent'] - ref[f'fastdrag_{stage}']['latent']).abs().max()):.2e}")
        assert err <= tol, (half["flag"], stage, err, tol)


def test_dragdiffusion_finite(half):
    ran(half, "dragdiffusion")
    got = half["files"]["dragdiffusion_edit"]
    assert finite(got["latent"]) and finite(got["image"]), half["flag"]


def test_dift_finite(half, fp32):
    entry = ran(half, "dift")
    md = entry["outputs"]["md"]["dragbench"][0]
    assert math.isfinite(md["md"]) and all(math.isfinite(m["distance"]) for m in md["matches"]), md
    ref = ran(fp32, "dift")["outputs"]["md"]["dragbench"][0]
    print(f"\n{half['flag']} DragMeanDistance: MD {md['md']:.3f} (float32 {ref['md']:.3f})")
