"""POST /fastdrag/preview: the points editor's warp preview, computed by fastdrag_core.

Registered on PromptServer.instance.routes when this module is imported (once, from the pack's
root ``__init__.py``); ComfyUI serves it at ``/fastdrag/preview`` and ``/api/fastdrag/preview``.
Also GET ``/fastdrag/image?filename=&subfolder=&type=``: the picture exactly as LoadImage reads
it (EXIF orientation applied, RGB), which the editor draws and places points on.

Body (JSON): ``{"image": {"filename", "subfolder", "type"}, "points": "<points JSON>",
"mask": null | {"filename", "subfolder", "type", "channel"}, "holes": true}`` with ``type`` one of
input / temp / output (the folders /view serves). Answers ``image/png`` (the warped image on the
latent grid, H//8 x W//8, holes tinted) with headers ``X-FastDrag-Grid: WxH``,
``X-FastDrag-Holes``, ``X-FastDrag-Ms``; any malformed request gets 400 ``{"error": message}``.
The file reading and PNG encoding live here; validation and maths are in
``fastdrag_core/preview.py``.
"""
from __future__ import annotations

import asyncio
import io
import logging
import os
import threading
import time
from collections import OrderedDict

import numpy as np
import torch
from aiohttp import web
from PIL import Image, ImageOps, UnidentifiedImageError

import folder_paths
from server import PromptServer

from ..fastdrag_core.preview import (PreviewRequestError, parse_file_ref, parse_preview_request,
                                     resolve_in_folder, warp_preview)

log = logging.getLogger(__name__)
ROUTE = "/fastdrag/preview"
IMAGE_ROUTE = "/fastdrag/image"
MAX_BODY = 1 << 20
_CACHE: OrderedDict = OrderedDict()  # (path, mtime_ns, size, what) -> tensor; a few decoded files
_CACHE_SIZE = 6
_CACHE_LOCK = threading.Lock()


def _folder(ftype: str) -> str:
    d = folder_paths.get_directory_by_type(ftype)
    if d is None:
        raise PreviewRequestError(f"type {ftype!r}: unknown folder")
    return d


def _cached(path: str, what: str, load):
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size, what)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    value = load(path)
    with _CACHE_LOCK:
        _CACHE[key] = value
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return value


def _open(path: str) -> Image.Image:
    try:
        img = Image.open(path)
        return ImageOps.exif_transpose(img)
    except (UnidentifiedImageError, OSError) as e:
        raise PreviewRequestError(f"{os.path.basename(path)!r}: not a readable image ({e})") from None


def load_rgb(path: str) -> torch.Tensor:
    """[H, W, 3] float 0..1, as LoadImage reads it (first frame, EXIF orientation applied)."""
    img = _open(path)
    if img.mode == "I":
        img = img.point(lambda v: v * (1 / 255))
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)


def load_mask(path: str, channel: str) -> torch.Tensor | None:
    """[H, W] float mask as LoadImage (alpha: 1 - alpha) / LoadImageMask (a colour channel) read it;
    None when the file has no such channel (LoadImage then gives an empty mask = whole image)."""
    img = _open(path)
    c = channel[0].upper()
    if c == "A":
        if "A" not in img.getbands() and not (img.mode == "P" and "transparency" in img.info):
            return None
        a = np.asarray(img.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0
        return 1.0 - torch.from_numpy(a)
    if img.mode == "I":
        img = img.point(lambda v: v * (1 / 255))
    return torch.from_numpy(np.asarray(img.convert("RGBA").getchannel(c), dtype=np.float32) / 255.0)


def to_png(preview: torch.Tensor) -> bytes:
    arr = (preview.clamp(0, 1).mul(255).round().to(torch.uint8)).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def render_preview(body) -> tuple[bytes, dict]:
    """The whole request without aiohttp: body dict -> (PNG bytes, info)."""
    req = parse_preview_request(body)
    image_path = resolve_in_folder(_folder(req.image.type), req.image)
    image = _cached(image_path, "rgb", load_rgb)
    mask = None
    if req.mask is not None:
        mask_path = resolve_in_folder(_folder(req.mask.type), req.mask)
        mask = _cached(mask_path, "mask:" + req.mask_channel, lambda p: load_mask(p, req.mask_channel))
        if mask is not None and tuple(mask.shape) != tuple(image.shape[:2]):
            raise PreviewRequestError(
                f"mask: {mask.shape[1]}x{mask.shape[0]} does not match the image {image.shape[1]}x{image.shape[0]}")
    preview, info = warp_preview(image, req.points, mask, holes=req.holes)
    return to_png(preview), info


def _bad(message: str, status: int = 400):
    return web.json_response({"error": message}, status=status)


@PromptServer.instance.routes.get(IMAGE_ROUTE)
async def fastdrag_image(request: web.Request):
    """The picture as LoadImage reads it (EXIF orientation applied, alpha dropped), as PNG, so the
    editor places points on exactly the pixels the node gets. Query: filename, subfolder, type."""
    q = request.rel_url.query
    try:
        ref = parse_file_ref({"filename": q.get("filename"), "subfolder": q.get("subfolder", ""),
                              "type": q.get("type", "input")}, "image")
        path = resolve_in_folder(_folder(ref.type), ref)
        png = await asyncio.get_running_loop().run_in_executor(
            None, lambda: to_png(_cached(path, "rgb", load_rgb)))
    except PreviewRequestError as e:
        return _bad(str(e))
    return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "no-cache"})


@PromptServer.instance.routes.post(ROUTE)
async def fastdrag_preview(request: web.Request):
    t0 = time.perf_counter()
    if request.content_length is not None and request.content_length > MAX_BODY:
        return _bad(f"request body larger than {MAX_BODY} bytes")
    try:
        body = await request.json()
    except ValueError as e:
        return _bad(f"request body: not valid JSON ({e})")
    try:  # off the event loop: a large image takes up to about a second on a CPU
        png, info = await asyncio.get_running_loop().run_in_executor(None, render_preview, body)
    except PreviewRequestError as e:
        return _bad(str(e))
    except Exception as e:  # a bug, not the user's input: say so, keep the server up
        log.exception("[FastDrag] preview failed")
        return _bad(f"preview failed: {type(e).__name__}: {e}", status=500)
    ms = (time.perf_counter() - t0) * 1000
    headers = {"X-FastDrag-Grid": "%dx%d" % tuple(info["grid"]), "X-FastDrag-Holes": str(info["holes"]),
               "X-FastDrag-Ms": f"{ms:.1f}", "Cache-Control": "no-store"}
    return web.Response(body=png, content_type="image/png", headers=headers)
