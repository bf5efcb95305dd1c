"""BNNI: hand-worked rows, the spec's sequential pseudo-code, the paper reading, edge cases."""

import random

import pytest
import torch

from fastdrag_core import bnni_fill, lwf_warp
from tests.reference import bnni_official_reference, bnni_paper_reference


def _row(values):
    """A 1-row latent [1, 1, 1, W] and its null mask (the zeros)."""
    lat = torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)
    return lat, lat[:, 0] == 0


def test_null_cell_between_two_valued_cells_gets_inverse_distance_mean():
    lat, null = _row([2.0, 0.0, 0.0, 8.0])
    for order in ("official", "paper"):
        out = bnni_fill(lat, null, order=order)
        # first null: left 2 at k=1, right 8 at k=2 -> (2 + 8/2) / (1 + 1/2) = 4
        assert out[0, 0, 0, 1].item() == pytest.approx(4.0, abs=1e-6)
    # second null: official uses the filled neighbour (4 at k=1) and 8 at k=1 -> 6;
    # paper uses 2 at k=2 and 8 at k=1 -> (1 + 8) / 1.5 = 6 (on a line both readings agree)
    assert bnni_fill(lat, null, order="official")[0, 0, 0, 2].item() == pytest.approx(6.0, abs=1e-6)
    assert bnni_fill(lat, null, order="paper")[0, 0, 0, 2].item() == pytest.approx(6.0, abs=1e-6)


def test_hand_worked_2d_official_differs_from_paper():
    # 3x3 grid, null 2x2 block at the top-left; valued: (0,2)=9, (1,2)=3, (2,0)=6, (2,1)=12, (2,2)=1.
    # official, raster order:
    #   (0,0): right 9 (k=2), down 6 (k=2)              -> (4.5 + 3) / 1 = 7.5
    #   (0,1): left 7.5 (k=1), right 9 (k=1), down 12 (k=2) -> (7.5 + 9 + 6) / 2.5 = 9
    #   (1,0): right 3 (k=2), up 7.5 (k=1), down 6 (k=1)  -> (1.5 + 7.5 + 6) / 2.5 = 6
    #   (1,1): left 6, right 3, up 9, down 12 (all k=1)   -> 30 / 4 = 7.5
    # paper: (0,1): right 9 (k=1), down 12 (k=2) -> (9 + 6) / 1.5 = 10
    lat = torch.tensor([[0.0, 0.0, 9.0], [0.0, 0.0, 3.0], [6.0, 12.0, 1.0]]).view(1, 1, 3, 3)
    null = lat[:, 0] == 0
    off = bnni_fill(lat, null, order="official")[0, 0]
    assert off.flatten().tolist() == pytest.approx([7.5, 9.0, 9.0, 6.0, 7.5, 3.0, 6.0, 12.0, 1.0])
    paper = bnni_fill(lat, null, order="paper")[0, 0]
    assert paper[0, 1].item() == pytest.approx(10.0)
    assert paper[0, 0].item() == pytest.approx(7.5)


def _warped_case(rng, h, w, dtype):
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    cy, cx, r = rng.uniform(2, h - 2), rng.uniform(2, w - 2), rng.uniform(2, min(h, w) / 2)
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if not mask.any():
        mask[h // 2, w // 2] = True
    n = rng.randint(1, 4)
    handles = [[rng.uniform(0, w - 1), rng.uniform(0, h - 1)] for _ in range(n)]
    targets = [[x + rng.uniform(-6, 6), y + rng.uniform(-6, 6)] for x, y in handles]
    g = torch.Generator().manual_seed(rng.randrange(10**6))
    lat = torch.randn(2, 4, h, w, generator=g).to(dtype)
    return lwf_warp(lat, handles, targets, mask, fill="zero")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_official_order_bit_exact_to_the_sequential_pseudo_code(dtype):
    rng = random.Random(42)
    filled_any = 0
    for _ in range(12):
        warped, null = _warped_case(rng, rng.choice([10, 16]), rng.choice([10, 14]), dtype)
        expected = bnni_official_reference(warped, null)
        out = bnni_fill(warped, null, order="official")
        assert out.dtype == dtype
        assert torch.equal(out, expected)
        filled_any += int(null.sum())
    assert filled_any > 0


def test_official_general_path_full_null_row_and_column_and_exact_zero_fill():
    # Row 1 and column 1 are entirely null, so (1,1) has no reference when its turn comes... but its
    # left and up neighbours were filled first; and a fill can come out exactly 0 (then it counts as
    # null for later cells). Both force the general wavefront; it must match the pseudo-code.
    lat = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0], [3.0, 0.0, 4.0]]).view(1, 1, 3, 3)
    null = lat[:, 0] == 0
    assert torch.equal(bnni_fill(lat, null), bnni_official_reference(lat, null))
    # (0,1) fills to exactly 0: (1*1 + (-6)*(1/3) + 1*1) / (7/3). For (0,2) it is then not a
    # reference: left is (0,0) = 1 at k=2, right -6 at k=2, down 2 at k=1 -> (0.5 - 3 + 2) / 2 = -0.25
    # (taking the zero neighbour at k=1 would give -0.4).
    lat = torch.tensor([[1.0, 0.0, 0.0, 0.0, -6.0], [5.0, 1.0, 2.0, 9.0, 4.0]]).view(1, 1, 2, 5)
    null = lat[:, 0] == 0
    out = bnni_fill(lat, null)
    assert out[0, 0, 0, 1].item() == 0.0
    assert out[0, 0, 0, 2].item() == pytest.approx(-0.25)
    assert torch.equal(out, bnni_official_reference(lat, null))


def test_all_null_keeps_values_and_no_null_is_identity():
    lat = torch.randn(1, 4, 5, 6)
    everything = torch.ones(5, 6, dtype=torch.bool)
    for order in ("official", "paper"):
        assert torch.equal(bnni_fill(lat, everything, order=order), lat)
        assert torch.equal(bnni_fill(lat, torch.zeros(5, 6, dtype=torch.bool), order=order), lat)


def test_values_under_the_null_mask_are_never_references():
    rng = random.Random(3)
    warped, null = _warped_case(rng, 16, 16, torch.float32)
    noisy = warped.clone()
    noisy[:, :, null[0]] = 123.0
    for order in ("official", "paper"):
        assert torch.equal(bnni_fill(noisy, null, order=order), bnni_fill(warped, null, order=order))


def test_paper_order_matches_float64_reference_and_is_order_independent():
    rng = random.Random(11)
    for _ in range(6):
        warped, null = _warped_case(rng, 12, 12, torch.float64)
        out = bnni_fill(warped, null, order="paper")
        n_null = int(null[0].sum())
        perm = list(range(n_null))
        rng.shuffle(perm)
        ref = bnni_paper_reference(warped[:1], null[:1], order=perm)
        assert torch.allclose(out[:1], ref, rtol=0, atol=1e-12)
        assert torch.allclose(out[:1], bnni_paper_reference(warped[:1], null[:1]), rtol=0, atol=1e-12)
        # mirror symmetry: filling the mirrored latent is the mirror of the fill
        mirrored = bnni_fill(warped.flip(-1), null.flip(-1), order="paper").flip(-1)
        assert torch.allclose(mirrored, out, rtol=0, atol=1e-12)


def test_official_and_paper_readings_differ_on_2d_holes():
    rng = random.Random(8)
    differ = 0
    for _ in range(5):
        warped, null = _warped_case(rng, 16, 16, torch.float32)
        differ += int((bnni_fill(warped, null) != bnni_fill(warped, null, order="paper")).any())
    assert differ > 0


def test_device_dtype_preserved_and_input_untouched():
    lat, null = _row([2.0, 0.0, 0.0, 8.0])
    before = lat.clone()
    out = bnni_fill(lat.half(), null)
    assert out.dtype == torch.float16 and out.device == lat.device
    for order in ("official", "paper"):
        bnni_fill(lat, null, order=order)
        assert torch.equal(lat, before)


@pytest.mark.parametrize(
    "args, message",
    [
        ((torch.zeros(1, 4, 4), torch.zeros(4, 4, dtype=torch.bool)), "rank 4"),
        ((torch.zeros(1, 1, 4, 4), torch.zeros(3, 4, dtype=torch.bool)), "3x4"),
        ((torch.zeros(2, 1, 4, 4), torch.zeros(3, 4, 4, dtype=torch.bool)), "batch 3"),
        ((torch.zeros(1, 1, 4, 4, dtype=torch.int64), torch.zeros(4, 4)), "dtype"),
    ],
)
def test_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        bnni_fill(*args)
    with pytest.raises(ValueError, match="order"):
        bnni_fill(torch.zeros(1, 1, 2, 2), torch.zeros(2, 2), order="raster")
