"""DragBench metrics core: DIFT matching against an independent float64 implementation, noise,
image preparation; the contact sheet drawing."""

import math

import numpy as np
import pytest
import torch

from fastdrag_core import metrics


def bilinear_up_f64(ft: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear upsampling, align_corners=False, written from the formula: source coordinate
    (i + 0.5) * in / out - 0.5, clamped at 0; neighbours i0 and min(i0 + 1, in - 1)."""
    c, h, w = ft.shape

    def axis(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, wy = axis(h, out_h)
    x0, x1, wx = axis(w, out_w)
    top = ft[:, y0][:, :, x0] * (1 - wx) + ft[:, y0][:, :, x1] * wx
    bot = ft[:, y1][:, :, x0] * (1 - wx) + ft[:, y1][:, :, x1] * wx
    return top * (1 - wy)[None, :, None] + bot * wy[None, :, None]


def reference_matches(ft_s, ft_e, handles, targets, hw):
    """The official matching in float64: upsample both, cosine of F_s(h) against every pixel, argmax."""
    up_s = bilinear_up_f64(ft_s[0].double().numpy(), *hw)
    up_e = bilinear_up_f64(ft_e[0].double().numpy(), *hw)
    out = []
    for (hx, hy), (tx, ty) in zip(handles, targets):
        v = up_s[:, int(hy), int(hx)]
        cos = np.tensordot(v, up_e, axes=(0, 0)) / (np.linalg.norm(v) * np.linalg.norm(up_e, axis=0))
        r, c = np.unravel_index(cos.argmax(), cos.shape)
        out.append(((int(c), int(r)), math.hypot(ty - r, tx - c), cos))
    return out


@pytest.mark.parametrize("hw, fhw, chunk", [((37, 29), (10, 8), 5), ((64, 48), (16, 12), 64)])
def test_matching_equals_float64_reference(hw, fhw, chunk):
    g = torch.Generator().manual_seed(0)
    ft_s = torch.randn(1, 24, *fhw, generator=g)
    ft_e = ft_s + 0.7 * torch.randn(1, 24, *fhw, generator=g)
    handles = [(3, 4), (hw[1] - 1, hw[0] - 1), (10, 20)]
    targets = [(6, 1), (0, 0), (12.5, 19.0)]
    got = metrics.match_points(ft_s, ft_e, handles, targets, hw, channel_chunk=chunk)
    ref = reference_matches(ft_s, ft_e, handles, targets, hw)
    for m, (matched, dist, cos) in zip(got, ref):
        if tuple(m["matched"]) != matched:  # only a float32 near-tie may pick another pixel
            assert cos[m["matched"][1], m["matched"][0]] >= cos.max() - 1e-6
        else:
            assert m["distance"] == pytest.approx(dist, abs=1e-12)
    assert [m["handle"] for m in got] == [[float(x), float(y)] for x, y in handles]


def test_identity_and_known_shift():
    """Edited = source -> every handle found at itself; edited = source shifted by (dx, dy) feature
    cells at an integer upsampling factor s -> found at handle + s * (dx, dy), exactly."""
    g = torch.Generator().manual_seed(1)
    ft = torch.randn(1, 32, 16, 16, generator=g)
    s, hw = 4, (64, 64)
    handles = [(20, 24), (33, 40), (26, 30)]
    ident = metrics.match_points(ft, ft, handles, handles, hw)
    assert [m["matched"] for m in ident] == [list(h) for h in handles]
    assert metrics.mean_distance(ident) == 0.0
    dx, dy = 3, -2
    shifted = torch.roll(ft, shifts=(dy, dx), dims=(2, 3))
    got = metrics.match_points(ft, shifted, handles, handles, hw)
    assert [m["matched"] for m in got] == [[x + s * dx, y + s * dy] for x, y in handles]
    assert metrics.mean_distance(got) == pytest.approx(s * math.hypot(dx, dy))
    # target = where the content went -> distance 0
    moved = [(x + s * dx, y + s * dy) for x, y in handles]
    assert metrics.mean_distance(metrics.match_points(ft, shifted, handles, moved, hw)) == 0.0


def test_handle_pixels_round_and_clamp():
    assert metrics.handle_pixels([(3.4, 5.6), (-2, 100), (9.5, 0)], 50, 10) == [(6, 3), (49, 0), (0, 9)]


def test_match_points_shape_error():
    with pytest.raises(ValueError, match="must both be"):
        metrics.match_points(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 9), [(1, 1)], [(1, 1)], (16, 16))


def test_dift_noise_is_per_sample_deterministic():
    a_s, a_e = metrics.dift_noise((1, 4, 6, 5))
    b_s, b_e = metrics.dift_noise((1, 4, 6, 5))
    assert a_s.shape == (8, 4, 6, 5) and torch.equal(a_s, b_s) and torch.equal(a_e, b_e)
    assert not torch.equal(a_s, a_e)
    g = torch.Generator().manual_seed(42)
    assert torch.equal(a_s, torch.randn(8, 4, 6, 5, generator=g))  # seed 42, source first
    c_s, _ = metrics.dift_noise((4, 6, 5), ensemble=2, seed=7)
    assert c_s.shape == (2, 4, 6, 5)


def test_lpips_input_and_resize():
    from PIL import Image

    g = torch.Generator().manual_seed(2)
    img = torch.randint(0, 256, (30, 40, 3), generator=g).float() / 255
    x = metrics.lpips_input(img)
    assert x.shape == (1, 3, 224, 224) and float(x.min()) >= -1 and float(x.max()) <= 1
    u8 = img.mul(255).round().to(torch.uint8).numpy()
    # run_eval_similarity.py: torch.from_numpy(u8).float() / 127.5 - 1, then interpolate (float32)
    official = torch.nn.functional.interpolate(torch.from_numpy(u8).float().permute(2, 0, 1)[None] / 127.5 - 1,
                                               (224, 224), mode="bilinear")
    assert torch.equal(x, official)
    ref64 = torch.from_numpy(bilinear_up_f64(u8.transpose(2, 0, 1).astype(np.float64) / 127.5 - 1, 224, 224))
    assert torch.allclose(x[0].double(), ref64, atol=1e-5)
    # the edited image is resized to the source size like PIL.Image.resize(BILINEAR) on 8-bit
    pil = np.asarray(Image.fromarray(u8).resize((20, 16), Image.BILINEAR))
    got = metrics.resize_like_source(img, 16, 20)
    assert got.shape == (16, 20, 3) and np.array_equal(got.mul(255).round().to(torch.uint8).numpy(), pil)
    assert metrics.resize_like_source(img, 30, 40) is not None and torch.equal(metrics.resize_like_source(img, 30, 40), img)


def test_contact_sheet_draws_points():
    from PIL import Image

    from fastdrag_core.dragbench_sheet import BLUE, GREEN, RED, contact_sheet

    src = Image.new("RGB", (64, 48), (128, 128, 128))
    row = {"title": "animals/a", "source": src, "result": src.copy(), "handles": [(10, 10)], "targets": [(50, 30)],
           "mask": None, "matches": [{"target": [50, 30], "matched": [20, 12], "distance": 34.9}],
           "caption": "MD 34.9"}
    failed = {"title": "animals/b", "source": src, "result": None, "handles": [(5, 5)], "targets": [(6, 6)],
              "error": "unsafe pickle"}
    sheet = contact_sheet([row, failed], cell=128, title="animals")
    a = np.asarray(sheet)
    assert sheet.size[0] == 2 * 128 + 24
    colours = {tuple(c) for c in a.reshape(-1, 3)}
    assert RED in colours and BLUE in colours and GREEN in colours
