"""Object moving / copy (fastdrag_core.object_move) against a transcription of the official code
(tests/integration/fastdrag_testpack/official_object_move.py) and hand-worked cases."""

import importlib.util
import os

import pytest
import torch

from fastdrag_core.object_move import (ObjectMove, move_object, object_move_args, object_move_from_drag,
                                       shift_cells)
from fastdrag_core.points import (DragPoints, check_drag, image_mask_to_latent, image_mask_to_latent_soft,
                                  image_points_to_latent)


def _official():
    path = os.path.join(os.path.dirname(__file__), "integration", "fastdrag_testpack", "official_object_move.py")
    spec = importlib.util.spec_from_file_location("fastdrag_official_object_move", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


OFF = _official()
TASK = {"move": "object moving", "copy": "object copy"}


def _case(seed, H, W, box, drag, fill_box=None, dtype=torch.float32):
    """Random latent, a rectangular object mask (plus ragged noise), one drag, optional fill box."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(H, W)
    y0, x0, y1, x1 = box
    mask[y0:y1, x0:x1] = 1
    mask[y0:y1, x0:x1] *= (torch.rand(y1 - y0, x1 - x0, generator=g) > 0.15).float()
    fill = None
    if fill_box is not None:
        fill = torch.zeros(H, W)
        fill[fill_box[0]:fill_box[2], fill_box[1]:fill_box[3]] = 1
    z = torch.randn(1, 4, H // 8, W // 8, generator=g).to(dtype)
    return z, mask, fill


def _ours(z, mask, drag, H, W, mode, fill=None, **kw):
    (hx, hy), (tx, ty) = drag
    h, w = z.shape[-2:]
    pts = image_points_to_latent(torch.tensor([[hx, hy], [tx, ty]], dtype=torch.float64), (H, W))
    args = object_move_args(pts[0], pts[1], image_mask_to_latent_soft(mask, (h, w)))
    fr = None if fill is None else image_mask_to_latent_soft(fill, (h, w))[None, None]
    return move_object(z, args.mask, args.shift, args.target, mode, fr, **kw), args


def _theirs(z, mask, drag, H, W, mode, fill=None):
    (hx, hy), (tx, ty) = drag
    m, shift_yx, target, mf = OFF.preprocess([[hx, hy], [tx, ty]], mask, H, W, fill)
    return OFF.latent_edit(z.clone(), m, shift_yx, target, TASK[mode], mask_fill=mf)


CASES = [
    # (seed, H, W, object box y0 x0 y1 x1, drag ((hx, hy), (tx, ty)), fill box)
    (0, 128, 192, (30, 40, 70, 90), ((60, 50), (120, 80)), None),      # non-square, right-down
    (1, 192, 128, (100, 20, 160, 80), ((50, 130), (20, 40)), None),    # left-up (negative shift)
    (2, 128, 128, (10, 10, 50, 50), ((30, 30), (37, 25)), None),       # shift under one cell: trunc to 0
    (3, 128, 128, (40, 40, 90, 90), ((60, 60), (45, 75)), None),       # -15 px: trunc toward zero (-1)
    (4, 128, 128, (40, 40, 90, 90), ((60, 60), (70, 66)), None),       # overlap of source and target
    (5, 128, 192, (0, 0, 40, 40), ((5, 5), (191, 127)), None),         # target at the far corner
    (6, 128, 192, (60, 140, 120, 190), ((185, 120), (0, 0)), None),    # target at the origin
    (7, 96, 160, (20, 20, 60, 70), ((40, 40), (150, 90)), (70, 100, 90, 150)),  # fill region
    (8, 96, 160, (20, 20, 60, 70), ((40, 40), (150, 90)), (0, 0, 0, 0)),  # empty fill region: target
    (9, 136, 200, (30, 30, 80, 100), ((50, 40), (199, 135)), (130, 190, 136, 200)),  # fill at the edge
    (10, 64, 512, (8, 8, 56, 60), ((20, 30), (511, 40)), None),        # long shift along x
    (11, 128, 128, (0, 0, 128, 128), ((0, 0), (127, 127)), None),      # whole-image mask, shift = grid - 0
]


@pytest.mark.parametrize("mode", ["move", "copy"])
@pytest.mark.parametrize("case", CASES, ids=[f"case{c[0]}" for c in CASES])
def test_matches_official_transcription(case, mode):
    seed, H, W, box, drag, fill_box = case
    z, mask, fill = _case(seed, H, W, box, drag, fill_box)
    ours, _ = _ours(z, mask, drag, H, W, mode, fill)
    theirs = _theirs(z, mask, drag, H, W, mode, fill)
    assert ours.dtype == z.dtype and ours.shape == z.shape
    assert float((ours - theirs).abs().max()) <= 1e-6


@pytest.mark.parametrize("mode", ["move", "copy"])
def test_float64_reference_and_half_precision(mode):
    H, W, drag = 128, 160, ((50, 40), (110, 70))
    z, mask, fill = _case(3, H, W, (20, 20, 80, 90), drag, (90, 100, 120, 150))
    ours, _ = _ours(z, mask, drag, H, W, mode, fill)
    ref64 = _theirs(z.double(), mask, drag, H, W, mode, fill)
    assert float((ours.double() - ref64).abs().max()) <= 1e-6
    zh = z.half()  # the official latent is fp16
    ours_h, _ = _ours(zh, mask, drag, H, W, mode, fill)
    assert ours_h.dtype == torch.float16
    assert torch.equal(ours_h, _theirs(zh, mask, drag, H, W, mode, fill))


def test_shift_of_exactly_the_grid_moves_out_and_beyond_is_refused():
    z = torch.randn(1, 4, 6, 10)
    mask = torch.zeros(1, 1, 6, 10)
    mask[..., 1:3, 2:5] = 1
    for shift in [(0, 10), (0, -10), (6, 0), (-6, 3)]:
        theirs = OFF.latent_edit(z.clone(), mask, torch.tensor([4.0 * shift[0], 4.0 * shift[1]]),
                                 torch.tensor([3.0, 5.0]), "object copy")
        assert torch.equal(move_object(z, mask, shift, (3.0, 5.0), "copy"), theirs)
        assert torch.equal(theirs, z)  # the copy left the picture
    for shift in [(0, 11), (-7, 0)]:
        with pytest.raises(Exception):  # the official shift_matrix fails there
            OFF.latent_edit(z.clone(), mask, torch.tensor([4.0 * shift[0], 4.0 * shift[1]]),
                            torch.tensor([3.0, 5.0]), "object copy")
        with pytest.raises(ValueError, match="larger than the 10x6 latent"):
            move_object(z, mask, shift, (3.0, 5.0), "copy")
        out = move_object(z, mask, shift, (3.0, 5.0), "move", allow_out_of_grid=True)
        assert torch.equal(out[..., mask[0, 0] == 0], z[..., mask[0, 0] == 0])  # nothing pasted
        assert torch.equal(out, move_object(z, mask, (0, 10), (3.0, 5.0), "move"))


@pytest.mark.parametrize("target", [(-7.0, 3.0), (3.0, -6.5), (-5.75, 3.0), (3.0, -5.5), (12.0, 3.0), (3.0, 16.0),
                                    (-100.0, 200.0)])
def test_fill_patch_outside_the_grid_is_refused_where_the_official_fails(target):
    z = torch.randn(1, 4, 6, 10)
    mask = torch.zeros(1, 1, 6, 10)
    mask[..., 1:3, 2:5] = 1
    with pytest.raises(Exception):
        OFF.paint_past(z.clone(), z, mask, mask, torch.tensor(target))
    with pytest.raises(ValueError, match="fill patch"):
        move_object(z, mask, (1, 1), target, "move")


@pytest.mark.parametrize("target", [(-5.0, 3.0), (3.0, -4.5), (11.5, 3.0), (3.0, 15.75), (0.0, 0.0), (6.0, 10.0),
                                    (5.5, 9.25)])
def test_targets_near_and_beyond_the_edges(target):
    """The patch is cut at the grid's edges (1-cell patches included) and the bounds truncate."""
    g = torch.Generator().manual_seed(5)
    z = torch.randn(1, 4, 6, 10, generator=g)
    mask = (torch.rand(1, 1, 6, 10, generator=g) > 0.6).float() * 0.5
    theirs = OFF.latent_edit(z.clone(), mask, torch.tensor([4.0, -8.0]), torch.tensor(target), "object moving")
    assert torch.equal(move_object(z, mask, (1, -2), target, "move"), theirs)


def test_hand_worked_move_copy_and_overlap():
    r, c = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    z = (100 * r + c)[None, None]
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 3, 4] = 1
    # copy by (0, 2): cell (3, 6) gets z(3, 4) = 304, nothing else changes
    out = move_object(z, mask, (0, 2), (8.0, 8.0), "copy")
    want = z.clone()
    want[..., 3, 6] = 304
    assert torch.equal(out, want)
    # move: the patch around (8, 8) is rows 2..13, cols 2..13, tiled from the top-left, so the
    # source (3, 4) gets z(2 + 3, 2 + 4) = 506
    want[..., 3, 4] = 506
    assert torch.equal(move_object(z, mask, (0, 2), (8.0, 8.0), "move"), want)
    # overlap: a 2-cell object moved by one cell; the official fill overwrites the moved object's
    # first cell (3, 5) with the patch (507); keep_object keeps it (304)
    mask[..., 3, 5] = 1
    official = move_object(z, mask, (0, 1), (8.0, 8.0), "move")
    kept = move_object(z, mask, (0, 1), (8.0, 8.0), "move", keep_object=True)
    assert official[0, 0, 3, 4:7].tolist() == [506, 507, 305]
    assert kept[0, 0, 3, 4:7].tolist() == [506, 304, 305]
    off = mask[0, 0] == 0
    off[3, 6] = False
    assert torch.equal(official[..., off], z[..., off]) and torch.equal(kept[..., off], z[..., off])
    # a fill region's bounding box (rows 0..1, cols 10..13) centres the patch at (0.5, 11.5):
    # rows 0..5 (0.5 - 6 < 0), cols 5..16 (trunc(5.5) = 5, 17.5 >= 16) -> source (3, 4) = z(3, 9)
    fill = torch.zeros(16, 16)
    fill[0:2, 10:14] = 0.25
    out = move_object(z, mask, (0, 1), (8.0, 8.0), "move", fill_region=fill)
    assert out[0, 0, 3, 4] == 309


def test_soft_mask_blends():
    z = torch.arange(12.0).reshape(1, 1, 3, 4)
    mask = torch.zeros(1, 1, 3, 4)
    mask[..., 1, 1] = 0.5
    out = move_object(z, mask, (1, 1), (1.0, 1.0), "copy")
    assert out[0, 0, 2, 2] == 0.5 * z[0, 0, 2, 2] + 0.5 * z[0, 0, 1, 1]
    assert torch.equal(shift_cells(z, -1, 2)[0, 0], torch.tensor([[0, 0, 4, 5], [0, 0, 8, 9], [0, 0, 0, 0.]]))


def test_noop_copy_is_the_identity():
    """A zero shift copies nothing: z itself (the official blend z (1 - M) + z M equals z up to one
    rounding where M is 1/4 or 3/4)."""
    z, mask, _ = _case(4, 128, 128, (20, 30, 90, 100), None)
    out, args = _ours(z, mask, ((50, 60), (52, 61)), 128, 128, "copy")
    assert args.shift == (0, 0)
    assert {0.25, 0.75} <= set(args.mask.unique().tolist())
    assert torch.equal(out, z)
    assert float((_theirs(z, mask, ((50, 60), (52, 61)), 128, 128, "copy") - z).abs().max()) <= 1e-6


def test_image_to_latent_mapping():
    """Hand-worked: 128x128 image (half 64, latent 16); handle (20, 33) -> half (10, 16.5 -> 16)
    -> latent (2.5, 4.0); target (61, 90) -> (30.5 -> 30, 45) -> (7.5, 11.25): shift trunc(5, 7.25)
    = (dx 5, dy 7); target (y, x) = (11.25, 7.5)."""
    pts = image_points_to_latent(torch.tensor([[20.0, 33.0], [61.0, 90.0]], dtype=torch.float64), (128, 128))
    soft = torch.zeros(16, 16)
    args = object_move_args(pts[0], pts[1], soft)
    assert isinstance(args, ObjectMove) and args.shift == (7, 5) and args.target == (11.25, 7.5)
    # negative: -13 px at 128 wide -> half -6.5 -> round(half) difference -6 or -7 -> /4 -> -1 (toward zero)
    pts = image_points_to_latent(torch.tensor([[60.0, 60.0], [47.0, 47.0]], dtype=torch.float64), (128, 128))
    assert object_move_args(pts[0], pts[1], soft).shift == (-1, -1)
    mask = torch.zeros(128, 128)
    mask[16:28, 16:27] = 1  # half resolution rows 8..13, cols 8..13; latent cell r reads half rows 4r+1, 4r+2
    s = image_mask_to_latent_soft(mask, (16, 16))
    assert torch.equal(s > 0, image_mask_to_latent(mask, (16, 16)))
    want = torch.zeros(16, 16)
    want[2, 2], want[2, 3], want[3, 2], want[3, 3] = 1.0, 0.5, 0.5, 0.25
    assert s.dtype == torch.float32 and torch.equal(s, want)


def test_from_drag_refuses_several_drags_and_no_mask():
    mask = torch.zeros(64, 64)
    mask[8:24, 8:24] = 1
    one = check_drag(DragPoints(((10.0, 10.0),), ((40.0, 30.0),)), (64, 64), mask)
    args = object_move_from_drag(one)
    assert args.shift == (2, 3) and args.mask.shape == (1, 1, 8, 8)
    two = check_drag(DragPoints(((10.0, 10.0), (12.0, 12.0)), ((40.0, 30.0), (20.0, 20.0))), (64, 64), mask)
    with pytest.raises(ValueError, match="takes one drag.*got 2"):
        object_move_from_drag(two)
    with pytest.raises(ValueError, match="needs a mask of the object"):
        object_move_from_drag(check_drag(DragPoints(((10.0, 10.0),), ((40.0, 30.0),)), (64, 64), None))


def test_bad_arguments():
    z = torch.zeros(1, 4, 6, 10)
    m = torch.zeros(1, 1, 6, 10)
    with pytest.raises(ValueError, match="mode"):
        move_object(z, m, (0, 0), (0.0, 0.0), "swap")
    with pytest.raises(ValueError, match="mask must be"):
        move_object(z, torch.zeros(1, 1, 6, 9), (0, 0), (0.0, 0.0))
    with pytest.raises(ValueError, match="whole latent cells"):
        move_object(z, m, (0.5, 0), (0.0, 0.0))
