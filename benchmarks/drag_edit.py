#!/usr/bin/env python3
"""One drag edit, headless, through ComfyUI's HTTP API: image + points (+ mask) -> PNG and timing.

    python3 benchmarks/drag_edit.py                         # the bundled picture, tiny random checkpoint
    python3 benchmarks/drag_edit.py --image photo.png --points points.json --mask mask.png \\
        --checkpoint v1-5-pruned-emaonly.safetensors --prompt "a photo of a house" --out edited.png
    python3 benchmarks/drag_edit.py --dragbench DragBench --sample animals/JH_2023-09-14-1820-16 --checkpoint ...

With no ``--checkpoint`` it edits ``benchmarks/data/sample.png`` with the drags of
``benchmarks/data/sample_points.json`` on the tiny randomly initialised test checkpoint (built once
with the comfy-harness's ``make_tiny_ckpt.py``, see ``COMFY_HARNESS_DIR``): the whole real pipeline
runs, but random weights paint noise. Give a real SD1.5-family checkpoint for a real edit.

The server: ``--url`` of a running ComfyUI with this pack, or one started headless from
``--comfyui`` (default ``COMFYUI_ROOT``, else ``~/.cache/comfy-harness/ComfyUI``) in a temporary run
folder that sees the checkout's model folders; ``--checkpoint`` may then be a file path.
The method: ``--method fastdrag`` (default) or ``dragdiffusion``, or ``--workflow FILE`` (an API
workflow with marked inputs, see ``marked_workflow.py``); settings with ``--set name=value``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import comfy_client  # noqa: E402
import marked_workflow as mw  # noqa: E402

SAMPLE_IMAGE = os.path.join(HERE, "data", "sample.png")
SAMPLE_POINTS = os.path.join(HERE, "data", "sample_points.json")
SAMPLE_PROMPT = "a house on a green hill under a sunny sky"
METHODS = {"fastdrag": os.path.join(HERE, "workflows", "fastdrag.json"),
           "dragdiffusion": os.path.join(HERE, "workflows", "dragdiffusion.json")}
# the tiny random test checkpoint each method runs on without --checkpoint: DragDiffusion supervises
# diffusers up_blocks[2], which the harness's 2-level tiny UNet does not have
TINY_KIND = {"fastdrag": "sd15", "dragdiffusion": "sd15_layout"}


def fail(msg: str):
    sys.exit(f"drag_edit: {msg}")


def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def read_points(value: str) -> str:
    """Points JSON text, or a file holding it."""
    if os.path.isfile(value):
        with open(value) as f:
            value = f.read()
    try:
        json.loads(value)
    except ValueError as e:
        fail(f"--points is neither a file nor JSON ({e})")
    return value


def inputs(args):
    """(PIL RGB image, points JSON, mask PIL 'L' or None, prompt, what) from the arguments."""
    from PIL import Image, ImageOps

    if args.dragbench:
        db = comfy_client.pure_core("dragbench")
        try:
            ref = db.find_sample(db.list_samples(args.dragbench), args.sample or "0")
            meta = db.read_meta(ref.meta_path)
            with Image.open(ref.image_path) as im:
                img = ImageOps.exif_transpose(im).convert("RGB")
            db.check_sample(meta, img.size[0], img.size[1], ref.meta_path)
        except (db.DragBenchError, db.UnsafePickleError, OSError) as e:
            fail(str(e))
        mask = None if meta.mask is None else Image.fromarray(meta.mask.astype("uint8") * 255, mode="L")
        prompt = meta.prompt if args.prompt is None else args.prompt
        return img, meta.points_json(*img.size), mask, prompt, f"DragBench {ref.key}"
    image = args.image or SAMPLE_IMAGE
    try:
        with Image.open(image) as im:
            img = ImageOps.exif_transpose(im).convert("RGB")
    except OSError as e:
        fail(f"cannot read --image {image}: {e}")
    points = read_points(args.points or (SAMPLE_POINTS if image == SAMPLE_IMAGE else ""))
    mask = None
    if args.mask:
        try:
            with Image.open(args.mask) as im:
                mask = im.convert("L")
        except OSError as e:
            fail(f"cannot read --mask {args.mask}: {e}")
        if mask.size != img.size:
            fail(f"--mask is {mask.size[0]}x{mask.size[1]} but the image is {img.size[0]}x{img.size[1]}")
    prompt = args.prompt if args.prompt is not None else (SAMPLE_PROMPT if image == SAMPLE_IMAGE else "")
    shown = os.path.relpath(image)
    return img, points, mask, prompt, image if shown.startswith("..") else shown


def tiny_kind(args) -> str:
    """The tiny test checkpoint kind for the method (an own --workflow: the harness's tiny SD1.5)."""
    return "sd15" if args.workflow else TINY_KIND[args.method]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_argument_group("what to edit (default: the bundled sample)")
    src.add_argument("--image", help="the image (PNG, JPEG, ...)")
    src.add_argument("--points", help="points JSON text or file (the pack's format or DragBench's flat list), "
                                      "in pixels of --image")
    src.add_argument("--mask", help="editable region as an image (white = editable); default the whole image")
    src.add_argument("--dragbench", help="a DragBench folder: take image, mask, points and prompt of --sample")
    src.add_argument("--sample", help="DragBench sample: index, category/sample or name (default 0)")
    src.add_argument("--prompt", help="the prompt (default: the sample's)")
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--method", choices=sorted(METHODS), default="fastdrag")
    how.add_argument("--workflow", help="an API-format workflow with marked inputs")
    ap.add_argument("--set", action="append", metavar="NAME=VALUE", help="a workflow setting, e.g. --set steps=20")
    ap.add_argument("--checkpoint", help="checkpoint name in the server, or a file (default: the tiny random test "
                                         "checkpoint; needs the comfy-harness)")
    ap.add_argument("--out", default=os.path.join(REPO, "artifacts", "drag_edit.png"), help="output PNG")
    srv = ap.add_mutually_exclusive_group()
    srv.add_argument("--comfyui", help="ComfyUI checkout to start headless (default COMFYUI_ROOT)")
    srv.add_argument("--url", help="a running ComfyUI with this pack")
    ap.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                    help="for a ComfyUI started here: auto = --cpu when its torch has no CUDA/ROCm build")
    ap.add_argument("--python", help="the python that runs ComfyUI")
    ap.add_argument("--timeout", type=float, default=3600)
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    t_wall = time.time()
    img, points, mask, prompt, what = inputs(args)
    try:
        workflow, defaults, _ = mw.load_workflow(args.workflow or METHODS[args.method])
        settings = {**defaults, **mw.parse_set(args.set)}
    except mw.WorkflowError as e:
        fail(str(e))
    tiny = args.checkpoint is None
    proc = None
    if args.url:
        if tiny:
            fail("with --url give --checkpoint (a checkpoint name that server lists)")
        client = comfy_client.ComfyClient(args.url)
        if not client.ready():
            fail(f"no ComfyUI answers at {args.url}")
    else:
        root, reason = comfy_client.find_comfyui(args.comfyui)
        if root is None:
            fail(reason)
        py = args.python or comfy_client.comfy_python(root)
        if tiny:
            try:
                args.checkpoint = comfy_client.tiny_checkpoint(root, py, tiny_kind(args))
            except comfy_client.NoTestCheckpoint as e:
                fail(f"{e}; or give --checkpoint")
        print(f"starting ComfyUI from {root} ...", flush=True)
        proc = client = comfy_client.ComfyProcess(root, python=py, cpu={"auto": None, "cpu": True, "gpu": False}[args.device])
    try:
        if proc is not None:
            try:
                proc.wait_ready()
            except (RuntimeError, TimeoutError) as e:
                fail(f"ComfyUI did not start: {e}")
        ckpt = proc.link_checkpoint(args.checkpoint) if proc is not None and os.path.isfile(args.checkpoint) \
            else args.checkpoint
        sub = f"drag_edit/{int(time.time() * 1000)}"
        values = {**settings, "image": client.upload_image(png_bytes(img), "image.png", sub), "points": points,
                  "prompt": prompt, "checkpoint": ckpt, "output": "drag_edit/edited"}
        if "mask" in mw.placeholders(workflow):
            from PIL import Image

            values["mask"] = client.upload_image(png_bytes(mask or Image.new("L", img.size, 255)), "mask.png", sub)
        n = len(json.loads(points)["drags"]) if points.strip().startswith("{") else len(json.loads(points)) // 2
        print(f"editing {what} ({img.size[0]}x{img.size[1]}, {n} drag(s), "
              f"{'mask' if mask is not None else 'no mask'}) with {args.workflow or args.method} on {ckpt}, "
              f"settings {json.dumps(settings)}", flush=True)
        try:
            data, secs, _ = mw.run_edit(client, workflow, values, timeout=args.timeout)
        except (comfy_client.PromptError, mw.WorkflowError, OSError, TimeoutError) as e:
            fail(str(e))
    finally:
        if proc is not None:
            proc.cleanup()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "wb") as f:
        f.write(data)
    from PIL import Image

    with Image.open(args.out) as im:
        size = im.size
    print(f"wrote {args.out} ({size[0]}x{size[1]}): the edit took {secs:.2f} s in the server (the first edit "
          f"includes loading the model), {time.time() - t_wall:.1f} s in all")
    if tiny:
        print("note: this is the tiny randomly initialised test checkpoint, so the picture is noise. For a real "
              "edit give --checkpoint <an SD1.5-family checkpoint in ComfyUI's models/checkpoints, or a file> "
              "(the official FastDrag model is the LCM-Dreamshaper v7 UNet) and --prompt.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
