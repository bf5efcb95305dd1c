"""The editor's preview of object moving / copy (fastdrag_core.preview.object_move_preview) and the
request fields that select it."""

import pytest
import torch

from fastdrag_core.points import DragPoints
from fastdrag_core.preview import (PreviewRequestError, object_move_preview, object_move_preview_grid,
                                   parse_preview_request)

SIZE = 256  # a 32x32 latent grid


def _scene():
    """Black picture, a white 32x32 px square at (16, 16): latent cells 2..5 (each cell reads half
    resolution rows 4r+1, 4r+2 of pixels 2x), its mask exactly that square."""
    img = torch.zeros(SIZE, SIZE, 3)
    img[16:48, 16:48] = 1.0
    mask = torch.zeros(SIZE, SIZE)
    mask[16:48, 16:48] = 1
    return img, mask


def _one(handle, target):
    return DragPoints((handle,), (target,), SIZE, SIZE)


def test_move_pastes_at_the_target_and_fills_the_source():
    # handle (32, 32) -> half (16, 16) -> latent (4, 4); target (200, 160) -> half (100, 80) ->
    # latent (25, 20): shift dx 21, dy 16; the fill patch around (y 20, x 25) is black
    img, mask = _scene()
    out, info = object_move_preview(img, _one((32, 32), (200, 160)), mask, "move object", holes=False)
    assert out.shape == (32, 32, 3) and info["grid"] == [32, 32]
    assert info["shift"] == [21, 16] and info["moved"] == 16 and info["holes"] == 16
    assert torch.equal(out[18:22, 23:27], torch.ones(4, 4, 3))
    assert torch.equal(out[2:6, 2:6], torch.zeros(4, 4, 3))
    assert float(out.sum()) == 16 * 3  # nothing else is white
    tinted, _ = object_move_preview(img, _one((32, 32), (200, 160)), mask, "move object", holes=True)
    assert torch.allclose(tinted[3, 3], torch.tensor([0.55, 0.0, 0.55]))
    assert torch.equal(tinted[20, 24], torch.ones(3))


def test_grid_path_moves_the_cells():
    """The route's path: the picture already reduced to the latent grid (one value per cell), the
    points, mask and fill region in pixels of the full picture."""
    _, mask = _scene()
    grid = torch.zeros(32, 32, 3)
    grid[2:6, 2:6] = 1.0  # the white square's cells
    fill = torch.zeros(SIZE, SIZE)
    fill[200:240, 200:240] = 1
    out, info = object_move_preview_grid(grid, (SIZE, SIZE), _one((32, 32), (200, 160)), mask, "move object",
                                         fill_region=fill, holes=False)
    assert info["shift"] == [21, 16] and info["moved"] == 16 and info["holes"] == 16
    assert torch.equal(out[18:22, 23:27], torch.ones(4, 4, 3)) and float(out.sum()) == 16 * 3
    with pytest.raises(PreviewRequestError, match="latent-grid"):
        object_move_preview_grid(grid[:-1], (SIZE, SIZE), _one((32, 32), (200, 160)), mask, "move object")


def test_full_picture_is_the_grid_path_on_the_cell_means():
    """A picture that VAEEncode crops (67x50: 1 px off each side): the full-picture function gives
    the grid path's result on the crop's 8x8 means (numpy reference)."""
    torch.manual_seed(0)
    img = torch.rand(50, 67, 3)
    mask = torch.zeros(50, 67)
    mask[10:30, 12:36] = 1
    fill = torch.zeros(50, 67)
    fill[33:49, 40:66] = 1
    drag = DragPoints(((20, 20),), ((44, 30),), 67, 50)
    means = img.numpy()[1:49, 1:65].reshape(6, 8, 8, 8, 3).mean(axis=(1, 3))
    for task in ("move object", "copy object"):
        full, info = object_move_preview(img, drag, mask, task, fill_region=fill)
        out, info2 = object_move_preview_grid(torch.from_numpy(means), (50, 67), drag, mask, task, fill_region=fill)
        assert info == info2 and info["grid"] == [8, 6] and torch.allclose(out, full, atol=1e-5)


def test_copy_keeps_the_original():
    img, mask = _scene()
    out, info = object_move_preview(img, _one((32, 32), (200, 160)), mask, "copy object")
    assert info["holes"] == 0
    assert torch.equal(out[2:6, 2:6], torch.ones(4, 4, 3)) and torch.equal(out[18:22, 23:27], torch.ones(4, 4, 3))


def test_overlap_keep_object_or_official():
    # shift of one cell to the right: (32, 32) -> (40, 32); the object covers cols 3..6 after the move.
    # The fill patch comes from a black fill region (the tiling of a patch around the target would
    # start at the grid's corner and give the object's own cells back here)
    img, mask = _scene()
    fill = torch.zeros(SIZE, SIZE)
    fill[200:240, 200:240] = 1
    kept, info = object_move_preview(img, _one((32, 32), (40, 32)), mask, "move object", holes=False,
                                     fill_region=fill)
    assert info["shift"] == [1, 0] and info["holes"] == 4  # only the vacated column is filled
    assert torch.equal(kept[2:6, 3:7], torch.ones(4, 4, 3)) and torch.equal(kept[2:6, 2], torch.zeros(4, 3))
    official, info = object_move_preview(img, _one((32, 32), (40, 32)), mask, "move object", overlap="official",
                                         holes=False, fill_region=fill)
    assert info["holes"] == 16  # the fill covers the whole old place, the moved object's overlap included
    assert torch.equal(official[2:6, 2:6], torch.zeros(4, 4, 3)) and torch.equal(official[2:6, 6], torch.ones(4, 3))


def test_fill_region_selects_the_patch():
    img, mask = _scene()
    img[160:256, 144:256] = torch.tensor([0.0, 1.0, 0.0])  # a green corner
    fill = torch.zeros(SIZE, SIZE)  # cells rows 26..29, cols 22..29: patch rows 21..31, cols 19..30 (green)
    fill[208:240, 180:240] = 1
    out, _ = object_move_preview(img, _one((32, 32), (120, 120)), mask, "move object", fill_region=fill,
                                 holes=False)
    assert torch.equal(out[3, 3], torch.tensor([0.0, 1.0, 0.0]))
    with pytest.raises(PreviewRequestError, match="fill_region: 64x64 .WxH. does not match the 256x256 image"):
        object_move_preview(img, _one((32, 32), (120, 120)), mask, "move object", fill_region=torch.zeros(64, 64))


def test_refusals_match_the_nodes():
    img, mask = _scene()
    two = DragPoints(((32, 32), (40, 40)), ((100, 100), (60, 60)), SIZE, SIZE)
    with pytest.raises(PreviewRequestError, match="takes one drag .* got 2"):
        object_move_preview(img, two, mask, "move object")
    with pytest.raises(PreviewRequestError, match="needs a mask of the object"):
        object_move_preview(img, _one((32, 32), (100, 100)), None, "copy object")


def test_request_fields():
    base = {"image": {"filename": "a.png"}, "points": "[[1, 2], [3, 4]]"}
    req = parse_preview_request(base)
    assert (req.task, req.overlap, req.fill_region) == ("drag", "keep object", None)
    req = parse_preview_request({**base, "task": "move object", "overlap": "official",
                                 "fill_region": {"filename": "f.png", "type": "input", "channel": "red"}})
    assert (req.task, req.overlap, req.fill_region.filename, req.fill_channel) == ("move object", "official",
                                                                                     "f.png", "red")
    for bad, word in (({"task": "swap"}, "task"), ({"overlap": 3}, "overlap"),
                      ({"fill_region": {"filename": "f.png", "channel": "cyan"}}, "fill_region.channel"),
                      ({"fill_region": {"filename": "../x.png", "type": "elsewhere"}}, "fill_region.type")):
        with pytest.raises(PreviewRequestError, match=word):
            parse_preview_request({**base, **bad})
