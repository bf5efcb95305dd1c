"""The points editor's server routes: POST /fastdrag/preview (the warp preview, computed by
fastdrag_core) and GET /fastdrag/image (the picture exactly as LoadImage reads it).

:func:`register_routes` adds both to ``PromptServer.instance.routes``; the pack's root
``comfy_entrypoint`` calls it once. ComfyUI serves them at ``/fastdrag/...`` and ``/api/fastdrag/...``.

POST body (JSON, at most :data:`MAX_BODY` bytes, chunked bodies included): ``{"image": {"filename",
"subfolder", "type"}, "points": "<points JSON>", "mask": null | {"filename", "subfolder", "type",
"channel"}, "holes": true, "task": "drag" | "move object" | "copy object", "overlap": "keep object" |
"official", "fill_region": null | {...like mask}}`` with ``type`` one of input / temp / output (the folders /view serves).
Answers ``image/png`` (the warped image on the latent grid, holes tinted) with headers
``X-FastDrag-Grid: WxH``, ``X-FastDrag-Holes``, ``X-FastDrag-Whole-Image`` (no mask: the whole
picture moves), ``X-FastDrag-Ms`` and, for the move / copy object tasks, ``X-FastDrag-Shift: dx,dy``
(latent cells). Anything malformed gets 400 ``{"error": message}``; messages
name what the client sent, never a path on the server.

GET query: ``filename``, ``subfolder``, ``type``; answers the picture as PNG (EXIF orientation
applied, alpha dropped) so the editor places points on exactly the pixels the node receives.

The file reading, the PNG encoding and the routes' shared state (:class:`PreviewRoutes`: the
decoded-image cache and the worker threads that bound parallel decodes) live here; validation, the
reduction of a picture to the latent grid while it is decoded, and the maths are in
``fastdrag_core/preview.py`` and ``fastdrag_core/points.py`` (the same checks as the nodes). A
picture's size is checked from its header before any pixel is decoded.
"""
from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from aiohttp import web
from PIL import Image, ImageOps

import folder_paths

from ..fastdrag_core.preview import (DecodedImageCache, PreviewRequestError, object_move_preview_grid,
                                     parse_file_ref, parse_preview_request, picture_grid, resolve_in_folder,
                                     warp_preview_grid)

log = logging.getLogger(__name__)
ROUTE = "/fastdrag/preview"
IMAGE_ROUTE = "/fastdrag/image"
MAX_BODY = 64 << 10         # a request with the maximum 32 drags is ~3 KB of JSON
CACHE_BYTES = 128 << 20     # decoded files kept (uint8), least recently used dropped first
MAX_PICTURE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # PIL's decompression-bomb limit
MAX_PREVIEW_PIXELS = 4096 * 4096  # larger pictures are not previewed (the nodes are not limited)
# Requests worked on at once (the routes' own worker threads). A preview decode holds at most one
# picture of MAX_PREVIEW_PIXELS (RGB 48 MiB; RGBA 64 MiB plus its RGB conversion).
DECODE_SLOTS = 2


def _open_unoriented(path: str, name: str, max_pixels: int) -> Image.Image:
    """Open an image lazily (only its header is read) and refuse it when it has more than
    ``max_pixels``, before any pixel is decoded. ``name`` is what the client asked for: messages
    never show the server's path."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError:
        raise PreviewRequestError(f"{name!r}: the image is too large to open "
                                  f"(over {2 * MAX_PICTURE_PIXELS:,} pixels)") from None
    except (OSError, ValueError, SyntaxError):
        raise PreviewRequestError(f"{name!r}: not a readable image file") from None
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise PreviewRequestError(f"{name!r}: {w}x{h} is {w * h:,} pixels, more than the {max_pixels:,} "
                                  "the editor handles here")
    return img


def _open(path: str, name: str, max_pixels: int) -> Image.Image:
    """:func:`_open_unoriented`, then EXIF orientation applied (as LoadImage does)."""
    img = _open_unoriented(path, name, max_pixels)
    try:
        return ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError):
        raise PreviewRequestError(f"{name!r}: not a readable image file") from None


def _decoded(fn):
    """Decoding errors of a truncated or corrupt file become 400s naming the client's file."""
    def wrapper(path: str, name: str, *args):
        try:
            return fn(path, name, *args)
        except PreviewRequestError:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            raise PreviewRequestError(f"{name!r}: not a readable image file") from None
    return wrapper


@_decoded
def load_rgb(path: str, name: str, max_pixels: int = MAX_PICTURE_PIXELS) -> np.ndarray:
    """[H, W, 3] uint8 as LoadImage reads it (first frame, EXIF orientation applied, alpha dropped)."""
    img = _open(path, name, max_pixels)
    if img.mode == "I":
        img = img.point(lambda v: v * (1 / 255))
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


@_decoded
def load_preview_picture(path: str, name: str, max_pixels: int = MAX_PREVIEW_PIXELS) -> PreviewPicture:
    """The picture reduced to the latent grid while it is read (:func:`picture_grid`), its size
    checked from the file's header before any pixel is decoded."""
    return picture_grid(_open_unoriented(path, name, max_pixels))


@_decoded
def load_mask(path: str, name: str, channel: str, max_pixels: int = MAX_PICTURE_PIXELS) -> np.ndarray:
    """[H, W] uint8 mask (255 = editable) as the node would get it: LoadImage's MASK (channel
    ``alpha``: 1 - alpha; a picture without alpha gives LoadImage's 64x64 all-zero placeholder,
    which FastDragPoints refuses as empty) or LoadImageMask (a colour channel)."""
    img = _open(path, name, max_pixels)
    c = channel[0].upper()
    if c == "A":
        if "A" not in img.getbands() and not (img.mode == "P" and "transparency" in img.info):
            return np.zeros((64, 64), dtype=np.uint8)
        return 255 - np.asarray(img.convert("RGBA").getchannel("A"), dtype=np.uint8)
    if img.mode == "I":
        img = img.point(lambda v: v * (1 / 255))
    return np.ascontiguousarray(np.asarray(img.convert("RGBA").getchannel(c), dtype=np.uint8))


def to_png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _folder(ftype: str) -> str:
    d = folder_paths.get_directory_by_type(ftype)
    if d is None:
        raise PreviewRequestError(f"type {ftype!r}: unknown folder")
    return d


def _shown_name(ref) -> str:
    return f"{ref.subfolder}/{ref.filename}" if ref.subfolder else ref.filename


def render_preview(body, cache: DecodedImageCache) -> tuple[bytes, dict]:
    """The whole request without aiohttp: body dict -> (PNG bytes, info)."""
    req = parse_preview_request(body)
    image_path = resolve_in_folder(_folder(req.image.type), req.image)
    name = _shown_name(req.image)
    picture = cache.get(image_path, "grid", lambda p: load_preview_picture(p, name))
    mask = None if req.mask is None else preview_mask(req.mask, req.mask_channel, cache)
    grid = torch.tensor(picture.grid).float().div_(255.0)
    if req.task != "drag":
        fill = None if req.fill_region is None else preview_mask(req.fill_region, req.fill_channel, cache)
        preview, info = object_move_preview_grid(grid, picture.size, req.points, mask, req.task,
                                                 overlap=req.overlap, fill_region=fill, holes=req.holes)
    else:
        preview, info = warp_preview_grid(grid, picture.size, req.points, mask, holes=req.holes)
    pixels = preview.clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    return to_png(pixels), info


def preview_mask(ref, channel: str, cache: DecodedImageCache) -> torch.Tensor:
    """[H, W] uint8 tensor of a mask file (the editable region, or the object task's fill region)
    read as the node reads it, at most MAX_PREVIEW_PIXELS. torch.tensor copies: the cached array
    stays read-only and untouched."""
    path = resolve_in_folder(_folder(ref.type), ref)
    name = _shown_name(ref)
    return torch.tensor(cache.get(path, "mask:" + channel,
                                  lambda p: load_mask(p, name, channel, MAX_PREVIEW_PIXELS)))


class BodyTooLarge(Exception):
    pass


async def read_body(request: web.Request, limit: int = MAX_BODY) -> bytes:
    """The request body, read as a stream and refused past ``limit`` bytes, whether or not the
    client sent a Content-Length (a chunked body has none)."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(16 << 10):
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json_body(raw: bytes):
    try:
        return json.loads(raw)
    except RecursionError:
        raise PreviewRequestError("request body: JSON nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer over Python's digit limit
        msg = (e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8" if isinstance(e, UnicodeDecodeError)
               else "a number has too many digits")
        raise PreviewRequestError(f"request body: not valid JSON ({msg})") from None


def _bad(message: str, status: int = 400):
    return web.json_response({"error": message}, status=status)


class PreviewRoutes:
    """The editor's two routes and what they share: the decoded-image cache and the worker threads
    that read, decode and encode files, DECODE_SLOTS of them: more parallel requests wait in their
    queue instead of each decoding its own picture. (In ComfyUI's default executor every request
    would decode at once, and each of its many threads would keep its own malloc arena of freed
    pictures: 20 parallel previews of 4096^2 peaked at 6.4 GB and kept 4 GB.)"""

    def __init__(self, cache_bytes: int = CACHE_BYTES, decode_slots: int = DECODE_SLOTS):
        self.cache = DecodedImageCache(cache_bytes)
        self.executor = ThreadPoolExecutor(max_workers=decode_slots, thread_name_prefix="fastdrag_preview")

    def register(self, routes) -> "PreviewRoutes":
        """Add GET /fastdrag/image and POST /fastdrag/preview to ``routes`` (an aiohttp RouteTableDef,
        ``PromptServer.instance.routes``)."""
        routes.get(IMAGE_ROUTE)(self.image)
        routes.post(ROUTE)(self.preview)
        return self

    def _picture_png(self, path: str, name: str) -> bytes:
        return to_png(self.cache.get(path, "rgb", lambda p: load_rgb(p, name)))

    async def image(self, request: web.Request):
        q = request.rel_url.query
        try:
            ref = parse_file_ref({"filename": q.get("filename"), "subfolder": q.get("subfolder", ""),
                                  "type": q.get("type", "input")}, "image")
            path = resolve_in_folder(_folder(ref.type), ref)
            png = await asyncio.get_running_loop().run_in_executor(self.executor, self._picture_png, path,
                                                                   _shown_name(ref))
        except PreviewRequestError as e:
            return _bad(str(e))
        except Exception:  # a bug, not the user's input: say so, keep the server up
            log.exception("[FastDrag] GET %s failed", IMAGE_ROUTE)
            return _bad("reading the image failed (a bug: see the server log)", status=500)
        return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "no-cache"})

    async def preview(self, request: web.Request):
        t0 = time.perf_counter()
        try:
            body = parse_json_body(await read_body(request))
            # off the event loop: decoding a large image takes a good part of a second on a CPU
            png, info = await asyncio.get_running_loop().run_in_executor(
                self.executor, render_preview, body, self.cache)
        except BodyTooLarge:
            return _bad(f"request body larger than {MAX_BODY} bytes", status=413)
        except PreviewRequestError as e:
            return _bad(str(e))
        except Exception:
            log.exception("[FastDrag] POST %s failed", ROUTE)
            return _bad("preview failed (a bug: see the server log)", status=500)
        ms = (time.perf_counter() - t0) * 1000
        headers = {"X-FastDrag-Grid": "%dx%d" % tuple(info["grid"]), "X-FastDrag-Holes": str(info["holes"]),
                   "X-FastDrag-Whole-Image": "1" if info["whole_image"] else "0",
                   "X-FastDrag-Ms": f"{ms:.1f}", "Cache-Control": "no-store"}
        if "shift" in info:  # move / copy object: the object's shift (dx, dy) in latent cells
            headers["X-FastDrag-Shift"] = "%d,%d" % tuple(info["shift"])
        return web.Response(body=png, content_type="image/png", headers=headers)


def register_routes(routes, cache_bytes: int = CACHE_BYTES) -> PreviewRoutes:
    """Add the editor's routes to ``routes``; returns their :class:`PreviewRoutes`."""
    return PreviewRoutes(cache_bytes).register(routes)
