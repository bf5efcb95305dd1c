"""Points JSON and the official image -> latent rules (spec §1.7), checked by hand."""

import json

import pytest
import torch

from fastdrag_core import image_mask_to_latent, image_points_to_latent
from fastdrag_core.points import DragPoints, check_points_in_image, parse_points


def test_points_mapping_hand_cases_512():
    pts = torch.tensor([[511.0, 0.0], [100.0, 120.0], [5.0, 7.0], [7.0, 5.0], [256.0, 511.0]])
    lat = image_points_to_latent(pts, (512, 512))
    # x_lat = round(x/512*256)/4: 511 -> round(255.5) = 256 (half to even) -> 64.0 (one cell outside)
    # 5 -> round(2.5) = 2 -> 0.5; 7 -> round(3.5) = 4 -> 1.0
    assert lat.tolist() == [[64.0, 0.0], [12.5, 15.0], [0.5, 1.0], [1.0, 0.5], [32.0, 64.0]]
    assert lat.dtype == torch.float32


def test_points_mapping_non_square_and_odd_sizes():
    # 640 x 480 (W x H): w2 = 320, h2 = 240 -> x/2 and y/2 rounded, then /4
    lat = image_points_to_latent([[101.0, 33.0]], (480, 640))
    assert lat.tolist() == [[12.5, 4.0]]  # round(50.5) = 50 -> 12.5; round(16.5) = 16 -> 4.0
    # odd width 513: w2 = 256, x = 513/2 -> 256*0.5 = 128 -> 32
    assert image_points_to_latent([[256.5, 0.0]], (8, 513)).tolist() == [[32.0, 0.0]]


def _mask_rule(mask):
    """Spec §1.7, multiples of 8: cell (r, c) set iff a pixel at rows {8r+2, 8r+4} x cols {8c+2, 8c+4} is set."""
    h, w = mask.shape[0] // 8, mask.shape[1] // 8
    out = torch.zeros(h, w, dtype=torch.bool)
    for r in range(h):
        for c in range(w):
            out[r, c] = bool(mask[[8 * r + 2, 8 * r + 4]][:, [8 * c + 2, 8 * c + 4]].any())
    return out


@pytest.mark.parametrize("hw", [(512, 512), (96, 128), (64, 40)])
def test_mask_mapping_follows_the_sampling_rule(hw):
    g = torch.Generator().manual_seed(hw[0])
    for density in (0.002, 0.02, 0.2):
        mask = torch.rand(*hw, generator=g) < density
        lat = image_mask_to_latent(mask.float() * 0.7, (hw[0] // 8, hw[1] // 8))
        assert torch.equal(lat, _mask_rule(mask))


def test_mask_mapping_batch_and_other_sizes():
    mask = torch.zeros(2, 100, 60)
    mask[0, 40:60, 20:40] = 1
    lat = image_mask_to_latent(mask, (12, 7))
    assert lat.shape == (2, 12, 7) and lat[0].any() and not lat[1].any()
    with pytest.raises(ValueError, match="mask"):
        image_mask_to_latent(torch.zeros(1, 1, 8, 8), (1, 1))


def test_parse_v1_and_dragbench_formats():
    text = json.dumps({"version": 1, "width": 512, "height": 256,
                       "drags": [{"handle": [10, 20], "target": [30.5, 40]}, {"handle": [1, 2], "target": [3, 4]}]})
    p = parse_points(text)
    assert p.handles == ((10.0, 20.0), (1.0, 2.0)) and p.targets == ((30.5, 40.0), (3.0, 4.0))
    assert (p.width, p.height) == (512, 256)
    flat = parse_points("[[10, 20], [30.5, 40], [1, 2], [3, 4]]")
    assert flat.handles == p.handles and flat.targets == p.targets and flat.width is None
    assert parse_points(p.to_json()) == p


def test_rescale_to_another_image_size():
    p = parse_points({"version": 1, "width": 512, "height": 256, "drags": [{"handle": [100, 50], "target": [200, 100]}]})
    q = p.scaled_to(256, 512)
    assert q.handles == ((50.0, 100.0),) and q.targets == ((100.0, 200.0),) and (q.width, q.height) == (256, 512)
    assert DragPoints(((1.0, 2.0),), ((3.0, 4.0),)).scaled_to(64, 64).handles == ((1.0, 2.0),)


@pytest.mark.parametrize(
    "value, message",
    [
        ("", "empty"),
        ("{not json", "not valid JSON"),
        ("[[1, 2], [3, 4], [5, 6]]", "odd count"),
        ('{"version": 1, "drags": []}', "no drag points"),
        ('{"version": 2, "drags": []}', "unsupported version 2"),
        ('{"version": 1, "drags": [{"handle": [1, 2]}]}', "drags\\[0\\]"),
        ('{"version": 1, "drags": [{"handle": [1, "a"], "target": [1, 2]}]}', "drags\\[0\\].handle"),
        ('[[1, NaN], [2, 3]]', "not finite"),
        ('{"version": 1, "width": -5, "drags": [{"handle": [1, 2], "target": [1, 2]}]}', "width"),
        ('"hello"', "expected a JSON object or list"),
        ('{"version": 1, "width": 64, "drags": [{"handle": [1, 2], "target": [1, 2]}]}', "both 'width' and 'height'"),
        ('[[true, 1], [2, 3]]', "two numbers"),
    ],
)
def test_parse_errors_are_clear(value, message):
    with pytest.raises(ValueError, match=message):
        parse_points(value)


def test_points_outside_image_named():
    p = parse_points("[[10, 20], [600, 40]]")
    with pytest.raises(ValueError, match=r"drag 0 target \(600, 40\) is outside the 512x512 image"):
        check_points_in_image(p, 512, 512)
    check_points_in_image(parse_points("[[0, 0], [511.5, 511]]"), 512, 512)


def test_huge_numbers_are_value_errors_not_overflow():
    with pytest.raises(ValueError, match="too large"):
        parse_points('[[1%s, 2], [3, 4]]' % ("0" * 400))
    with pytest.raises(ValueError, match="width"):
        parse_points('{"version": 1, "width": Infinity, "drags": [{"handle": [1, 2], "target": [1, 2]}]}')


def test_check_drag_maps_to_the_latent_like_vaeencode_crops():
    from fastdrag_core.points import check_drag, vae_crop

    # 67 x 50 (W x H): VAEEncode keeps 64 x 48 from offset (x=1, y=1)
    assert vae_crop((50, 67)) == (1, 1, 48, 64)
    mask = torch.zeros(50, 67)
    mask[1:9, 1:9] = 1  # exactly latent cell (0, 0) of the cropped image
    p = parse_points("[[10, 10], [30, 10]]")
    checked = check_drag(p, (50, 67), mask)
    handles, targets, lat_mask = checked.handles, checked.targets, checked.mask
    # shifted to (9, 9): x_lat = round(9 / 64 * 32) / 4 = round(4.5) / 4 = 1.0 (not 10/67*33 -> 1.25)
    assert handles.tolist() == [[1.0, 1.0]] and targets.tolist() == [[3.5, 1.0]]  # round(29/2)=14 -> 3.5
    assert lat_mask.shape == (6, 8) and lat_mask.nonzero().tolist() == [[0, 0]]
    with pytest.raises(ValueError, match=r"border VAEEncode crops away: a 67x50 image is encoded as its centred 64x48 part \(x from 1 to below 65, y from 1 to below 49\)"):
        check_drag(parse_points("[[0, 0], [5, 5]]"), (50, 67))


# -- check_drag: the one validation of the preview route, FastDragPoints and FastDragWarp ----------

def _drags(*pairs, w=None, h=None):
    return DragPoints(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs), w, h)


def test_check_drag_refuses_the_crop_margin_and_names_it():
    from fastdrag_core.points import check_drag

    # 126 x 128 (W x H): VAEEncode keeps x in [3, 123); x = 2 and x = 123 are cropped away
    ok = check_drag(_drags(((3, 0), (122.9, 127.5))), (128, 126))
    assert ok.crop == (0, 3, 128, 120)
    for bad in (((2, 10), (50, 50)), ((50, 50), (123, 10))):
        with pytest.raises(ValueError, match=r"in the border VAEEncode crops away: a 126x128 image is encoded as its "
                                             r"centred 120x128 part \(x from 3 to below 123"):
            check_drag(_drags(bad), (128, 126))


def test_check_drag_caps_drags_and_cell_drags():
    from fastdrag_core.points import MAX_CELL_DRAGS, MAX_DRAGS, check_drag

    many = _drags(*[((1, 1), (2, 2))] * (MAX_DRAGS + 1))
    with pytest.raises(ValueError, match=f"{MAX_DRAGS + 1} drags, at most {MAX_DRAGS}"):
        check_drag(many, (64, 64))
    check_drag(_drags(*[((1, 1), (2, 2))] * MAX_DRAGS), (64, 64))
    # cells x drags: 512x512 latent cells (4096 px) = 262,144 cells; 16 drags = 2^22 pass, 17 do not
    assert MAX_CELL_DRAGS == 16 * 512 * 512
    check_drag(_drags(*[((1, 1), (2, 2))] * 16), (4096, 4096))
    with pytest.raises(ValueError, match="4,456,448 cell-drags"):
        check_drag(_drags(*[((1, 1), (2, 2))] * 17), (4096, 4096))


def test_parse_caps_drags_before_building_them():
    from fastdrag_core.points import MAX_DRAGS

    big = json.dumps({"version": 1, "drags": [{"handle": [1, 1], "target": [2, 2]}] * 30000})
    with pytest.raises(ValueError, match=f"30000 drags, at most {MAX_DRAGS}"):
        parse_points(big)
    with pytest.raises(ValueError, match="30000 drags"):
        parse_points([[1, 1]] * 60000)
    with pytest.raises(ValueError, match="nested too deeply"):
        parse_points("[" * 100000 + "]" * 100000)
    assert len(parse_points('{"version": 1, "drags": []}', allow_empty=True)) == 0
    assert len(parse_points("", allow_empty=True)) == 0


def test_check_drag_mask_rules():
    from fastdrag_core.points import check_drag

    d = _drags(((10, 10), (20, 20)))
    with pytest.raises(ValueError, match="^the mask is empty; paint"):
        check_drag(d, (64, 64), torch.zeros(1, 64, 64))
    with pytest.raises(ValueError, match="^the mask is empty"):  # LoadImage's placeholder: "empty", not "size"
        check_drag(d, (128, 128), torch.zeros(64, 64))
    with pytest.raises(ValueError, match="^the mask is 32x64 \\(WxH\\), which does not match the 64x64 image"):
        check_drag(d, (64, 64), torch.ones(64, 32))
    with pytest.raises(ValueError, match="batch of 2"):
        check_drag(d, (64, 64), torch.ones(2, 64, 64))
    one_px = torch.zeros(64, 64)
    one_px[0, 0] = 1  # the official mask rule samples pixels 2 and 4 of each 8: no cell is set
    with pytest.raises(ValueError, match="covers no latent cell"):
        check_drag(d, (64, 64), one_px)
    whole = check_drag(d, (64, 64))
    assert whole.image_mask is None and whole.mask.all() and whole.mask.shape == (8, 8)


def test_check_drag_rescales_and_keeps_image_pixels():
    from fastdrag_core.points import check_drag

    c = check_drag(_drags(((32, 16), (64, 8)), w=128, h=64), (32, 64))
    assert c.points.handles == ((16.0, 8.0),) and c.points.targets == ((32.0, 4.0),)
    assert (c.points.width, c.points.height) == (64, 32)
    assert c.handles.tolist() == [[2.0, 1.0]] and c.targets.tolist() == [[4.0, 0.5]]
    with pytest.raises(ValueError, match="outside the 64x32 image"):
        check_drag(_drags(((10, 10), (64, 10))), (32, 64))


def test_handles_outside_mask_hand_worked():
    """A 6x4 mask editable in columns 2..3 only: handles are rounded half up (as the editor rounds)
    and clamped into the image; None = whole image editable."""
    from fastdrag_core.points import handles_outside_mask
    m = torch.zeros(4, 6)
    m[:, 2:4] = 1
    handles = [(2, 0), (1.49, 1), (1.5, 1), (3.49, 3), (3.5, 3), (-5, 2), (99, 2)]
    assert handles_outside_mask(handles, m) == [1, 4, 5, 6]
    assert handles_outside_mask(handles, m[None]) == [1, 4, 5, 6]
    assert handles_outside_mask(handles, None) == []
