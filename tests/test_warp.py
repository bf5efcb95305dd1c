"""LWF + relocation: hand-worked grids, a float64 reference from the spec's equations, invariants."""

import random

import pytest
import torch

from fastdrag_core import lwf_warp
from fastdrag_core.warp import relocation_plan
from tests.reference import lwf_destinations_f64, near_tie, relocate_reference


def _latent(h, w, b=1, c=4, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, c, h, w, generator=g) + 0.5).to(dtype)  # never exactly 0


def _strip():
    mask = torch.zeros(5, 5, dtype=torch.bool)
    mask[2, 1:4] = True  # cells (2,1) (2,2) (2,3): circle centre (2,2), R = 1 (+1e-6)
    return mask


def test_hand_worked_strip_handle_on_centre_paper():
    # Handle on the centre cell (2,2) dragged one column right. Outer cells lie on circle O: alpha = 0,
    # they stay. The handle cell gets alpha = 1 (paper) -> (2,3), which it claims before (2,3) itself.
    lat = _latent(5, 5)
    warped, null = lwf_warp(lat, [[2.0, 2.0]], [[3.0, 2.0]], _strip(), handle_on_cell="paper")
    assert torch.equal(warped[:, :, 2, 1], lat[:, :, 2, 1])
    assert torch.equal(warped[:, :, 2, 3], lat[:, :, 2, 2])
    assert torch.equal(warped[:, :, 2, 2], torch.zeros(1, 4))
    expected_null = torch.zeros(1, 5, 5, dtype=torch.bool)
    expected_null[0, 2, 2] = True
    assert torch.equal(null, expected_null)
    outside = ~_strip()
    assert torch.equal(warped[:, :, outside], lat[:, :, outside])


def test_hand_worked_strip_handle_on_centre_official_drops_it():
    lat = _latent(5, 5)
    warped, null = lwf_warp(lat, [[2.0, 2.0]], [[3.0, 2.0]], _strip(), handle_on_cell="official")
    assert torch.equal(warped[:, :, 2, 3], lat[:, :, 2, 3])  # (2,3) maps onto itself
    assert torch.equal(warped[:, :, 2, 2], torch.zeros(1, 4))  # the handle cell is dropped
    assert null[0, 2, 2] and int(null.sum()) == 1


def test_hand_worked_destination_outside_mask_overwrites():
    # Handle on (2,1) dragged two rows down. (2,1): alpha = 1 -> (4,1), outside the mask.
    # (2,2): |p-s| = 1, lambda = -1, rho = R + 1 ~ 2 -> alpha ~ 1/2 -> (3,2). (2,3): alpha ~ 0.
    lat = _latent(5, 5)
    warped, null = lwf_warp(lat, [[1.0, 2.0]], [[1.0, 4.0]], _strip(), fill="zero")
    assert torch.equal(warped[:, :, 4, 1], lat[:, :, 2, 1])
    assert torch.equal(warped[:, :, 3, 2], lat[:, :, 2, 2])
    assert torch.equal(warped[:, :, 2, 3], lat[:, :, 2, 3])
    assert null[0].nonzero().tolist() == [[2, 1], [2, 2]]
    # fill="keep" leaves the vacated cells' old values in place
    kept, null_keep = lwf_warp(lat, [[1.0, 2.0]], [[1.0, 4.0]], _strip(), fill="keep")
    assert torch.equal(kept[:, :, 2, 1], lat[:, :, 2, 1]) and torch.equal(null_keep, null)


def test_long_drag_clamped_to_border_and_collisions_first_come():
    # 3x3 block, handle on its centre (2,2) dragged 38 columns right. Cells (2,1), (2,2), (2,3)
    # (alpha ~0.29, 1, ~0.29) all land beyond the last column and are clamped onto (2,5):
    # the first in raster order, (2,1), wins it.
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[1:4, 1:4] = True
    lat = _latent(6, 6)
    warped, null = lwf_warp(lat, [[2.0, 2.0]], [[40.0, 2.0]], mask)
    assert torch.equal(warped[:, :, 2, 5], lat[:, :, 2, 1])
    assert null[0, 2, 1] and null[0, 2, 2]
    plan = relocation_plan(mask, torch.tensor([[2.0, 2.0]]), torch.tensor([[40.0, 2.0]]))
    assert len(set(plan.destinations.tolist())) == len(plan.destinations)
    for dst, src in zip(plan.destinations.tolist(), plan.sources.tolist()):
        assert torch.equal(warped[0, :, dst // 6, dst % 6], lat[0, :, src // 6, src % 6])


def _random_case(rng):
    h, w = rng.choice([(8, 8), (12, 16), (16, 12), (20, 20)])
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    kind = rng.choice(["disc", "ring", "strip", "single", "full", "two", "border", "noise"])
    if kind == "disc":
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1, min(h, w) / 2)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    elif kind == "ring":
        d = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2).sqrt()
        mask = (d <= min(h, w) / 2 - 1) & (d >= min(h, w) / 2 - 3)
    elif kind == "strip":
        mask = (xx >= w // 3) & (xx < w // 3 + 2)
    elif kind == "single":
        mask = torch.zeros(h, w, dtype=torch.bool)
        mask[rng.randrange(h), rng.randrange(w)] = True
    elif kind == "full":
        mask = torch.ones(h, w, dtype=torch.bool)
    elif kind == "two":
        mask = ((yy - h // 4) ** 2 + (xx - w // 4) ** 2 <= 4) | ((yy - 3 * h // 4) ** 2 + (xx - 3 * w // 4) ** 2 <= 6)
    elif kind == "border":
        mask = (yy < 3) | (xx > w - 3)
    else:
        mask = torch.rand(h, w, generator=torch.Generator().manual_seed(rng.randrange(10**6))) < 0.3
    if not mask.any():
        mask[0, 0] = True
    n = rng.randint(1, 5)
    # quarter-cell handles as the official image->latent mapping makes them, some outside the mask/grid
    handles = [[rng.randint(-4, 4 * w + 4) / 4, rng.randint(-4, 4 * h + 4) / 4] for _ in range(n)]
    targets = [[x + rng.randint(-40, 40) / 4, y + rng.randint(-40, 40) / 4] for x, y in handles]
    return mask, handles, targets, kind


@pytest.mark.parametrize("handle_on_cell", ["official", "paper"])
def test_matches_float64_reference_of_the_equations(handle_on_cell):
    rng = random.Random(1234)
    checked = 0
    for case in range(200):
        mask, handles, targets, kind = _random_case(rng)
        ref_dest, sensitive = lwf_destinations_f64(mask, handles, targets, handle_on_cell)
        if sensitive or near_tie(ref_dest):
            continue  # float32 and float64 may round a tie, or a near-tangent ray, either way
        lat = _latent(*mask.shape, seed=case)
        ref_warped, ref_null = relocate_reference(lat, mask, ref_dest)
        warped, null = lwf_warp(lat, handles, targets, mask, handle_on_cell=handle_on_cell)
        assert torch.equal(warped, ref_warped), (case, kind)
        assert torch.equal(null[0], ref_null), (case, kind)
        checked += 1
    assert checked >= 120  # most cases are unambiguous: the comparison is not vacuous


def test_zero_length_drags_are_identity():
    rng = random.Random(7)
    for case in range(40):
        mask, handles, _, _ = _random_case(rng)
        lat = _latent(*mask.shape, seed=case)
        warped, null = lwf_warp(lat, handles, handles, mask, handle_on_cell="paper")
        assert torch.equal(warped, lat)
        assert not null.any()


def test_invariants_claimed_once_values_move_with_all_channels():
    rng = random.Random(99)
    for case in range(40):
        mask, handles, targets, _ = _random_case(rng)
        plan = relocation_plan(mask, torch.tensor(handles), torch.tensor(targets))
        assert len(set(plan.destinations.tolist())) == len(plan.destinations)
        assert len(set(plan.sources.tolist())) == len(plan.sources)
        lat = _latent(*mask.shape, c=6, seed=case)
        warped, null = lwf_warp(lat, handles, targets, mask)
        h, w = mask.shape
        flat_w, flat_l = warped.view(1, 6, -1), lat.view(1, 6, -1)
        assert torch.equal(flat_w[..., plan.destinations], flat_l[..., plan.sources])
        assert not (null[0] & ~mask).any()  # only editable cells can be null
        untouched = ~mask & ~plan.claimed  # unmasked cells change only when overwritten
        assert torch.equal(warped[:, :, untouched], lat[:, :, untouched])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dtype_and_batch(dtype):
    rng = random.Random(5)
    mask, handles, targets, _ = _random_case(rng)
    lat = _latent(*mask.shape, b=3, seed=3, dtype=dtype)
    warped, null = lwf_warp(lat, handles, targets, mask)
    assert warped.dtype == dtype and warped.shape == lat.shape and null.shape == (3, *mask.shape)
    for b in range(3):
        single, single_null = lwf_warp(lat[b:b + 1], handles, targets, mask)
        assert torch.equal(warped[b:b + 1], single) and torch.equal(null[b], single_null[0])
    # per-sample masks
    masks = torch.stack([mask, torch.ones_like(mask), mask.flip(0) | mask])
    warped, null = lwf_warp(lat, handles, targets, masks)
    for b in range(3):
        single, single_null = lwf_warp(lat[b:b + 1], handles, targets, masks[b])
        assert torch.equal(warped[b:b + 1], single) and torch.equal(null[b], single_null[0])


def test_float_mask_nonzero_is_editable():
    mask = _strip().float() * 0.3
    lat = _latent(5, 5)
    a = lwf_warp(lat, [[1.0, 2.0]], [[1.0, 4.0]], mask)
    b = lwf_warp(lat, [[1.0, 2.0]], [[1.0, 4.0]], _strip())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_input_not_modified():
    lat = _latent(5, 5)
    before = lat.clone()
    lwf_warp(lat, [[1.0, 2.0]], [[1.0, 4.0]], _strip())
    assert torch.equal(lat, before)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mask=torch.zeros(5, 5)), "mask is empty"),
        (dict(handles=torch.zeros(0, 2), targets=torch.zeros(0, 2)), "N = 0"),
        (dict(targets=[[1.0, 1.0], [2.0, 2.0]]), "same length"),
        (dict(handles=[[float("nan"), 1.0]]), "not finite"),
        (dict(targets=[[float("inf"), 1.0]]), "not finite"),
        (dict(mask=torch.ones(4, 5)), "4x5"),
        (dict(mask=torch.ones(2, 5, 5)), "batch 2"),
        (dict(mask=torch.ones(1, 1, 5, 5)), "rank"),
        (dict(latent=torch.ones(4, 5, 5)), "rank 4"),
        (dict(handles=[[1.0, 2.0, 3.0]]), "[N, 2]"),
        (dict(fill="nope"), "fill"),
        (dict(handle_on_cell="nope"), "handle_on_cell"),
    ],
)
def test_bad_input_raises_value_error_naming_it(kwargs, message):
    args = dict(latent=_latent(5, 5), handles=[[1.0, 2.0]], targets=[[2.0, 2.0]], mask=_strip())
    args.update(kwargs)
    latent, handles, targets, mask = args.pop("latent"), args.pop("handles"), args.pop("targets"), args.pop("mask")
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        lwf_warp(latent, handles, targets, mask, **args)


def test_official_mode_never_crashes_when_first_cell_is_a_handle():
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[2:5, 2:5] = True
    lat = _latent(6, 6)
    warped, null = lwf_warp(lat, [[2.0, 2.0]], [[3.0, 3.0]], mask, handle_on_cell="official")
    assert null[0, 2, 2]  # the first mask cell sits on the handle: dropped, not a crash
    paper, paper_null = lwf_warp(lat, [[2.0, 2.0]], [[3.0, 3.0]], mask, handle_on_cell="paper")
    assert torch.equal(paper[:, :, 3, 3], lat[:, :, 2, 2])
