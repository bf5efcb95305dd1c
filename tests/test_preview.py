"""Unit tests of the warp-preview route's pure parts (fastdrag_core/preview.py): request
validation, the input-folder path check and the warp of a picture. No ComfyUI needed."""

import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from fastdrag_core.preview import (FileRef, PreviewRequestError, parse_file_ref,  # noqa: E402
                                   parse_preview_request, resolve_in_folder, warp_preview)


def pts(*drags, w=64, h=48):
    return json.dumps({"version": 1, "width": w, "height": h,
                       "drags": [{"handle": list(a), "target": list(b)} for a, b in drags]})


def body(points, **kw):
    return {"image": {"filename": "a.png", "subfolder": "", "type": "input"}, "points": points, **kw}


# ------------------------------------------------------------------------------ request parsing

def test_parse_ok():
    req = parse_preview_request(body(pts(((10, 20), (30, 25)))))
    assert req.image == FileRef("a.png", "", "input")
    assert req.mask is None and req.holes is True
    assert req.points.handles == ((10.0, 20.0),) and req.points.targets == ((30.0, 25.0),)
    assert (req.points.width, req.points.height) == (64, 48)


def test_parse_mask_and_channel():
    req = parse_preview_request(body(pts(((1, 2), (3, 4))),
                                     mask={"filename": "m.png", "subfolder": "clipspace", "type": "input",
                                           "channel": "red"}))
    assert req.mask == FileRef("m.png", "clipspace", "input") and req.mask_channel == "red"


@pytest.mark.parametrize("bad, words", [
    ("{not json", "not valid JSON"),
    ('{"version": 1, "drags": []}', "no drag"),
    ('{"version": 1, "drags": [{"handle": [1]}]}', "drags[0]"),
    ('{"version": 2, "drags": [{"handle": [1, 2], "target": [3, 4]}]}', "version"),
    ("[[1, 2], [3, 4], [5, 6]]", "odd"),
    ("42", "expected"),
])
def test_parse_bad_points(bad, words):
    with pytest.raises(PreviewRequestError, match="points") as e:
        parse_preview_request(body(bad))
    assert words in str(e.value)


@pytest.mark.parametrize("b, words", [
    ([], "JSON object"),
    ({"points": "[]"}, "image"),
    ({"image": {"filename": ""}, "points": "[]"}, "filename"),
    ({"image": {"filename": "a.png", "type": "models"}, "points": "[]"}, "type"),
    ({"image": {"filename": "a\x00.png"}, "points": "[]"}, "NUL"),
    ({"image": {"filename": "a.png", "subfolder": 3}, "points": "[]"}, "subfolder"),
    ({"image": {"filename": "a.png"}}, "points: missing"),
    ({"image": {"filename": "a.png"}, "points": "[[1,2],[3,4]]", "mask": {"filename": "m.png", "channel": "x"}},
     "channel"),
    ({"image": {"filename": "a.png"}, "points": "[[1,2],[3,4]]", "holes": "yes"}, "holes"),
])
def test_parse_bad_request(b, words):
    with pytest.raises(PreviewRequestError) as e:
        parse_preview_request(b)
    assert words in str(e.value)


def test_file_ref_accepts_plain_name():
    assert parse_file_ref("x.png", "image") == FileRef("x.png", "", "input")


# ------------------------------------------------------------------------------ path safety

@pytest.fixture
def folders(tmp_path):
    inp = tmp_path / "input"
    (inp / "sub").mkdir(parents=True)
    (inp / "a.png").write_bytes(b"x")
    (inp / "sub" / "b.png").write_bytes(b"x")
    (tmp_path / "secret.png").write_bytes(b"x")
    os.symlink(tmp_path / "secret.png", inp / "link.png")
    return inp


def test_resolve_inside(folders):
    assert resolve_in_folder(str(folders), FileRef("a.png")) == os.path.realpath(folders / "a.png")
    assert resolve_in_folder(str(folders), FileRef("b.png", "sub")) == os.path.realpath(folders / "sub" / "b.png")


@pytest.mark.parametrize("ref", [
    FileRef("../secret.png"), FileRef("secret.png", ".."), FileRef("secret.png", "sub/../.."),
    FileRef(os.path.abspath(__file__)), FileRef("passwd", "/etc"), FileRef("link.png"), FileRef(".", ""),
])
def test_resolve_escape(folders, ref):
    with pytest.raises(PreviewRequestError, match="leaves"):
        resolve_in_folder(str(folders), ref)


def test_resolve_missing(folders):
    with pytest.raises(PreviewRequestError, match="no such file"):
        resolve_in_folder(str(folders), FileRef("nope.png"))


# ------------------------------------------------------------------------------ the warp

def _points(*drags, w=64, h=48):
    return parse_preview_request(body(pts(*drags, w=w, h=h))).points


def test_noop_drag_is_the_pooled_image():
    torch.manual_seed(0)
    img = torch.rand(48, 64, 3)
    out, info = warp_preview(img, _points(((20, 16), (20, 16))), None)
    pooled = img.reshape(6, 8, 8, 8, 3).mean(dim=(1, 3))
    assert out.shape == (6, 8, 3) and info["grid"] == [8, 6] and info["holes"] == 0
    assert torch.allclose(out, pooled, atol=1e-6)


def test_constant_image_stays_constant_and_holes_are_reported():
    img = torch.full((48, 64, 3), 0.25)
    out, info = warp_preview(img, _points(((16, 16), (40, 24))), None, holes=False)
    assert info["holes"] > 0
    assert torch.allclose(out, torch.full_like(out, 0.25), atol=1e-5)  # BNNI averages; offset cancels


def test_black_image_is_not_all_holes():
    """Official BNNI order reads channel 0 == 0 as "no value": the preview offsets pixels away from 0."""
    img = torch.zeros(48, 64, 3)
    out, info = warp_preview(img, _points(((16, 16), (40, 24))), None, holes=False)
    assert torch.allclose(out, torch.zeros_like(out), atol=1e-5)  # not tinted, not garbage


def test_holes_tinted_magenta():
    img = torch.full((48, 64, 3), 0.5)
    out, info = warp_preview(img, _points(((16, 16), (40, 24))), None, holes=True)
    tinted = (out[..., 1] < 0.4).sum().item()
    assert tinted == info["holes"] > 0


def test_mask_limits_the_warp():
    torch.manual_seed(1)
    img = torch.rand(48, 64, 3)
    mask = torch.zeros(48, 64)
    mask[8:40, 8:40] = 1
    drag = _points(((16, 16), (24, 20)))
    out, info = warp_preview(img, drag, mask, holes=False)
    full, _ = warp_preview(img, drag, None, holes=False)
    pooled = img.reshape(6, 8, 8, 8, 3).mean(dim=(1, 3))
    assert info["mask_cells"] < 48
    assert torch.allclose(out[:, 6:], pooled[:, 6:], atol=1e-6)  # right of the mask: untouched
    assert not torch.allclose(out, full)


def test_empty_mask_is_refused_like_the_node():
    img = torch.rand(48, 64, 3)
    drag = _points(((16, 16), (24, 20)))
    for empty in (torch.zeros(48, 64), torch.zeros(64, 64)):  # also LoadImage's 64x64 placeholder
        with pytest.raises(PreviewRequestError, match="^the mask is empty; paint the region"):
            warp_preview(img, drag, empty)
    _, info = warp_preview(img, drag, None)
    assert info["whole_image"] and info["mask_cells"] == 48


def test_points_rescaled_from_another_size():
    img = torch.rand(48, 64, 3)
    a, _ = warp_preview(img, _points(((32, 32), (64, 40)), w=128, h=96), None)
    b, _ = warp_preview(img, _points(((16, 16), (32, 20))), None)
    assert torch.equal(a, b)


@pytest.mark.parametrize("drag", [((70, 10), (20, 20)), ((10, 10), (20, 48)), ((-1, 10), (20, 20))])
def test_point_outside_image(drag):
    with pytest.raises(PreviewRequestError, match="outside"):
        warp_preview(torch.rand(48, 64, 3), _points(drag), None)


def test_bad_shapes():
    with pytest.raises(PreviewRequestError, match="smaller than one latent cell"):
        warp_preview(torch.rand(4, 64, 3), _points(((1, 1), (2, 2)), w=64, h=4), None)
    with pytest.raises(PreviewRequestError, match="does not match"):
        warp_preview(torch.rand(48, 64, 3), _points(((1, 1), (2, 2))), torch.ones(10, 10))


def test_size_not_multiple_of_8_is_cropped_like_vaeencode():
    img = torch.rand(50, 67, 3)
    out, info = warp_preview(img, _points(((20, 20), (20, 20)), w=67, h=50), None)
    assert info["grid"] == [8, 6]
    ref = img[1:49, 1:65].reshape(6, 8, 8, 8, 3).mean(dim=(1, 3))
    assert torch.allclose(out, ref, atol=1e-6)


def test_crop_shifts_points_like_the_nodes():
    # A 67x50 image previews exactly like its VAEEncode crop (64x48 at offset 1, 1) with the
    # points shifted by the crop.
    img = torch.rand(50, 67, 3)
    out, _ = warp_preview(img, _points(((20, 20), (36, 14)), ((40, 30), (30, 34)), w=67, h=50), None)
    crop, _ = warp_preview(img[1:49, 1:65].contiguous(),
                           _points(((19, 19), (35, 13)), ((39, 29), (29, 33)), w=64, h=48), None)
    assert torch.equal(out, crop)


# ------------------------------------------------------------------------------ the routes' decoded-image cache

def test_decoded_image_cache_is_bounded_by_bytes(tmp_path):
    import numpy as np

    from fastdrag_core.preview import DecodedImageCache

    files = []
    for k in range(5):
        f = tmp_path / f"{k}.bin"
        f.write_bytes(b"x")
        files.append(str(f))
    loads = []

    def load(n):
        def fn(path):
            loads.append(path)
            return np.zeros(n, dtype=np.uint8)
        return fn

    cache = DecodedImageCache(max_bytes=1000)
    for f in files[:3]:
        cache.get(f, "rgb", load(400))          # 3 x 400 B > 1000 B: the oldest goes
    assert len(cache) == 2 and cache.nbytes == 800
    cache.get(files[1], "rgb", load(400))       # still there: no reload, and now the most recent
    assert loads.count(files[1]) == 1
    cache.get(files[3], "rgb", load(400))       # evicts files[2], the least recently used
    cache.get(files[1], "rgb", load(400))
    cache.get(files[2], "rgb", load(400))
    assert loads.count(files[1]) == 1 and loads.count(files[2]) == 2
    big = cache.get(files[4], "rgb", load(5000))  # larger than the bound: returned, not kept
    assert big.nbytes == 5000 and cache.nbytes <= 1000 and len(cache) == 2
    (tmp_path / "1.bin").write_bytes(b"changed")  # another size: a new key, read again
    cache.get(files[1], "rgb", load(400))
    assert loads.count(files[1]) == 2


# ------------------------------------------------------------------------------ the route's reduced decode

def _picture(w, h):
    """A smooth RGB picture with detail inside each 8x8 cell, as uint8 [h, w, 3]."""
    import numpy as np
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x * 7 + y * 13) % 64) * 4],
                    -1).astype(np.uint8)


def _cell_means(rgb, crop):
    """The reference: float mean of each 8x8 block of VAEEncode's crop (torch avg_pool2d)."""
    y0, x0, kh, kw = crop
    x = torch.from_numpy(rgb.copy()).float().permute(2, 0, 1)[None, :, y0:y0 + kh, x0:x0 + kw]
    return torch.nn.functional.avg_pool2d(x, 8)[0].permute(1, 2, 0)


@pytest.mark.parametrize("w, h", [(64, 48), (67, 50)])
def test_picture_grid_png_is_the_cell_mean(tmp_path, w, h):
    """A PNG (RGBA: alpha dropped as LoadImage does) is reduced to the 8x8 cell means of VAEEncode's
    centred crop (rounded to uint8), the size is the file's."""
    from PIL import Image

    from fastdrag_core.points import vae_crop
    from fastdrag_core.preview import picture_grid
    rgb = _picture(w, h)
    rgba = Image.fromarray(rgb, "RGB").convert("RGBA")
    rgba.putalpha(7)  # colours under (almost) transparent alpha stay what they are
    rgba.save(tmp_path / "a.png")
    pic = picture_grid(Image.open(tmp_path / "a.png"))
    assert pic.size == (h, w) and pic.grid.flags.writeable
    ref = _cell_means(rgb, vae_crop((h, w)))
    assert pic.grid.shape == tuple(ref.shape)
    assert (torch.from_numpy(pic.grid).float() - ref).abs().max() <= 0.5 + 1e-4


def test_picture_grid_jpeg_is_decoded_reduced_and_oriented(tmp_path):
    """A JPEG is decoded at 1/8 scale (never at full size) and its EXIF orientation applied: a
    quarter turn swaps the size; the cells are close to the full decode's cell means."""
    import numpy as np
    from PIL import Image

    from fastdrag_core.preview import picture_grid
    rgb = np.repeat(np.repeat(_picture(16, 12), 8, 0), 8, 1)  # flat 8x8 cells: JPEG keeps them
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    Image.fromarray(rgb, "RGB").save(tmp_path / "a.jpg", quality=95, exif=exif)
    img = Image.open(tmp_path / "a.jpg")
    decoded = []
    real_load = img.load
    img.load = lambda: (decoded.append(img.size), real_load())[1]
    pic = picture_grid(img)
    assert decoded and max(s[0] * s[1] for s in decoded) <= 16 * 12  # decoded at 1/8 scale
    assert pic.size == (128, 96)  # (H, W) after the quarter turn of a 128x96 file
    full = np.asarray(Image.open(tmp_path / "a.jpg").transpose(Image.Transpose.ROTATE_270))
    ref = _cell_means(full, (0, 0, 128, 96))
    assert pic.grid.shape == (16, 12, 3)
    assert (torch.from_numpy(pic.grid).float() - ref).abs().mean() < 4


def test_warp_preview_grid_is_warp_preview_of_the_cell_means():
    """The route's path (a reduced grid) and the full-picture path give the same preview."""
    from fastdrag_core.preview import warp_preview_grid
    torch.manual_seed(0)
    img = torch.rand(50, 67, 3)
    drag = _points(((20, 20), (36, 14)), ((40, 30), (30, 34)), w=67, h=50)
    full, info = warp_preview(img, drag, None)
    grid = _cell_means((img * 255).numpy(), (1, 1, 48, 64)) / 255
    out, info2 = warp_preview_grid(grid, (50, 67), drag, None)
    assert info == info2 and torch.allclose(out, full, atol=1e-5)
    with pytest.raises(PreviewRequestError, match="latent-grid"):
        warp_preview_grid(grid[:-1], (50, 67), drag, None)


@pytest.mark.parametrize("digits", [401, 4000, 5000])
def test_huge_width_is_a_clear_refusal(digits):
    """A width of hundreds or thousands of digits is refused with a message (not OverflowError, not
    Python's digit-limit text)."""
    text = '{"version": 1, "width": %s, "height": 10, "drags": [{"handle": [1, 1], "target": [2, 2]}]}' % ("9" * digits)
    with pytest.raises(PreviewRequestError) as e:
        parse_preview_request(body(text))
    msg = str(e.value)
    assert msg.startswith("points:") and ("'width'" in msg or "too many digits" in msg), msg
    assert "sys." not in msg and len(msg) < 200
