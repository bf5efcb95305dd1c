"""fastdrag_core.dragdiffusion: DragDiffusion's latent optimisation, against hand-worked cases and
float64 references written here from the equations (bilinear sampling per cell, brute-force
tracking, Adam from its update rule) that share no code with the module."""

import importlib.util
import math
import os

import pytest
import torch
from torch.nn import Conv2d  # plain layers: the unit tests' small models (no comfy.ops here)
import torch.nn.functional as F

from fastdrag_core import dragdiffusion as dd

# -- float64 references (independent of the module) -----------------------------------------------


def _load_equations():
    """The float64 equations shared with the server-side reference node (no ComfyUI import)."""
    path = os.path.join(os.path.dirname(__file__), "integration", "fastdrag_testpack", "dd_equations.py")
    spec = importlib.util.spec_from_file_location("fastdrag_dd_equations", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_EQ = _load_equations()
ref_bilinear, ref_motion_loss = _EQ.bilinear, _EQ.motion_loss


def ref_track(feat0, feat1, handles, handles_init, r_p):
    _, _, height, width = feat0.shape
    out = []
    for (hr, hc), (ir, ic) in zip(handles.tolist(), handles_init.tolist()):
        f0 = feat0[0, :, int(ir), int(ic)].double()
        best = None
        for r in range(max(0, int(hr) - r_p), min(height, int(hr) + r_p + 1)):
            for c in range(max(0, int(hc) - r_p), min(width, int(hc) + r_p + 1)):
                d = float((feat1[0, :, r, c].double() - f0).abs().sum().detach())
                if best is None or d < best[0]:
                    best = (d, r, c)
        out.append([best[1], best[2]])
    return torch.tensor(out, dtype=torch.float32)


class RefAdam:
    """Adam (Kingma & Ba) from its update rule, defaults betas (0.9, 0.999), eps 1e-8."""

    def __init__(self, lr):
        self.lr, self.t, self.m, self.v = lr, 0, 0.0, 0.0

    def step(self, z, g):
        self.t += 1
        self.m = 0.9 * self.m + 0.1 * g
        self.v = 0.999 * self.v + 0.001 * g * g
        m_hat = self.m / (1 - 0.9 ** self.t)
        v_hat = self.v / (1 - 0.999 ** self.t)
        return z - self.lr * m_hat / (v_hat.sqrt() + 1e-8)


def ref_loop(forward, z, handles, targets, mask, steps, lr, lam, r_m, r_p):
    """The official loop order written out in float64 with the references above."""
    z = z.clone()
    adam = RefAdam(lr)
    handles_init = handles.clone()
    history = [handles.clone()]
    feat0 = x0 = None
    for step in range(steps):
        zz = z.clone().requires_grad_(True)
        x_prev, feat = forward(zz)
        if step == 0:
            feat0, x0 = feat.detach(), x_prev.detach()
        else:
            handles = ref_track(feat0, feat, handles, handles_init, r_p)
            history.append(handles.clone())
        if all(math.dist(h, t) < 2.0 for h, t in zip(handles.tolist(), targets.tolist())):
            break
        loss = ref_motion_loss(feat, handles, targets, r_m)
        if mask is not None:
            loss = loss + lam * ((x_prev - x0) * (1 - mask.double())).abs().sum()
        (g,) = torch.autograd.grad(loss, zz)
        z = adam.step(z, g)
    return z, history


def toy_model(seed=0, channels=6, dtype=torch.float64):
    """A small differentiable stand-in for the UNet: features = tanh(conv(z)) resized 2x bilinearly
    (the feature grid is twice the latent grid, as for SD: 8x latent, half-size features);
    x_prev = a linear map of z."""
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(channels, 4, 3, 3, generator=g, dtype=dtype) * 0.4
    w2 = torch.randn(4, 4, 3, 3, generator=g, dtype=dtype) * 0.1

    def forward(z):
        h = torch.tanh(F.conv2d(z, w1.to(z.dtype), padding=1))
        feat = F.interpolate(h, size=(2 * z.shape[-2], 2 * z.shape[-1]), mode="bilinear")
        return 0.9 * z + F.conv2d(z, w2.to(z.dtype), padding=1), feat

    return forward


# -- mapping ---------------------------------------------------------------------------------------


def test_feature_grid_and_point_mapping_by_hand():
    assert dd.feature_grid_size((512, 512)) == (256, 256)
    assert dd.feature_grid_size((128, 96)) == (64, 48)
    pts = [(100, 30), (511, 511), (3, 1), (5, 7)]
    rc = dd.points_to_feature_grid(pts, (512, 512))
    # row = round(y / 2), col = round(x / 2), halves to even: 255.5 -> 256, 1.5 -> 2, 0.5 -> 0, 2.5 -> 2
    assert rc.tolist() == [[15.0, 50.0], [256.0, 256.0], [0.0, 2.0], [4.0, 2.0]]
    assert rc.dtype == torch.float32
    # non-square: H=128 -> 64 rows, W=96 -> 48 cols
    assert dd.points_to_feature_grid([(48, 64)], (128, 96)).tolist() == [[32.0, 24.0]]
    back = dd.feature_grid_to_image(torch.tensor([[32.0, 24.0]]), (128, 96))
    assert back.tolist() == [[48.0, 64.0]]


def test_mask_two_nearest_resizes_by_hand():
    mask = torch.zeros(16, 16)
    mask[4:6, 8:10] = 1  # rows 4-5, cols 8-9
    # feature grid 8x8: legacy nearest picks source index 2*i -> cells (2, 4); latent 2x2 (stride 4
    # on the grid) picks grid index 4*j -> rows {0, 4}, cols {0, 4}: only grid (2, 4) is set and it
    # is not sampled -> empty; a block covering image rows 0-1 / cols 8-9 survives.
    assert not dd.mask_to_latent(mask, (16, 16), (2, 2)).any()
    mask2 = torch.zeros(16, 16)
    mask2[0:2, 8:10] = 0.3
    assert dd.mask_to_latent(mask2, (16, 16), (2, 2)).tolist() == [[False, True], [False, False]]
    # equals F.interpolate nearest composed twice (the official code), on a random mask
    g = torch.Generator().manual_seed(3)
    m = (torch.rand(40, 56, generator=g) > 0.6).float()
    ref = F.interpolate(F.interpolate(m[None, None], (20, 28), mode="nearest"), (5, 7), mode="nearest")[0, 0] > 0
    assert torch.equal(dd.mask_to_latent(m, (40, 56), (5, 7)), ref)
    with pytest.raises(ValueError, match="mask must be"):
        dd.mask_to_latent(torch.ones(3, 4), (4, 4), (1, 1))


# -- feature patch sampling ------------------------------------------------------------------------


def test_interpolate_feature_patch_is_exact_on_a_linear_ramp():
    # feat(c, r, col) = 2 r + 3 col + c: bilinear sampling of an affine field is exact
    r = torch.arange(10.0).view(1, 1, 10, 1)
    col = torch.arange(12.0).view(1, 1, 1, 12)
    feat = 2 * r + 3 * col + torch.arange(2.0).view(1, 2, 1, 1)
    out = dd.interpolate_feature_patch(feat, torch.tensor(3.25), torch.tensor(6.25),
                                       torch.tensor(4.5), torch.tensor(7.5))
    assert out.shape == (1, 2, 3, 3)
    rows = torch.tensor([3.25, 4.25, 5.25]).view(1, 1, 3, 1)
    cols = torch.tensor([4.5, 5.5, 6.5]).view(1, 1, 1, 3)
    expect = 2 * rows + 3 * cols + torch.arange(2.0).view(1, 2, 1, 1)
    torch.testing.assert_close(out, expect, rtol=0, atol=1e-5)


def test_interpolate_feature_patch_matches_reference_everywhere_incl_borders():
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(1, 5, 9, 11, generator=g, dtype=torch.float64)
    for r1, c1 in [(0, 0), (3, 4), (6, 8), (0, 8), (6, 0)]:
        for dr, dc in [(0.6, -0.8), (-1.0, 0.0), (0.0, 1.0), (-0.28, 0.96), (0.7071, 0.7071)]:
            out = dd.interpolate_feature_patch(feat, r1 + dr, r1 + 3 + dr, c1 + dc, c1 + 3 + dc)
            dr32, dc32 = float(torch.tensor(r1 + dr, dtype=torch.float32)) - r1, \
                float(torch.tensor(c1 + dc, dtype=torch.float32)) - c1
            for i in range(3):
                for j in range(3):
                    ref = ref_bilinear(feat[0], r1 + i + dr32, c1 + j + dc32)
                    torch.testing.assert_close(out[0, :, i, j], ref, rtol=0, atol=1e-6)


# -- motion supervision ----------------------------------------------------------------------------


@pytest.mark.parametrize("r_m", [0, 1, 2])
def test_motion_loss_and_gradient_match_float64_reference(r_m):
    g = torch.Generator().manual_seed(r_m)
    base = torch.randn(1, 6, 12, 14, generator=g, dtype=torch.float64)
    handles = torch.tensor([[5.0, 6.0], [0.0, 13.0], [11.0, 1.0], [6.0, 6.0]])
    targets = torch.tensor([[9.0, 2.0], [4.0, 9.0], [2.0, 1.0], [7.0, 7.0]])  # last: within 2 -> skipped
    f1 = base.clone().requires_grad_(True)
    loss = dd.motion_supervision_loss(f1, handles, targets, r_m)
    (g1,) = torch.autograd.grad(loss, f1)
    f2 = base.clone().requires_grad_(True)
    ref = ref_motion_loss(f2, handles, targets, r_m)
    (g2,) = torch.autograd.grad(ref, f2)
    # the official code computes d_i and the bilinear weights in float32 (handles are float32
    # tensors): 1e-7-level differences from the float64 reference, nothing more
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g1, g2, rtol=0, atol=1e-6)
    assert float(g1.abs().max()) > 1e-2


def test_motion_loss_hand_worked_one_channel():
    # 1 channel, feat = column index; handle (2, 2) -> target (2, 6): d = (0, 1), r_m = 0:
    # |F(2,2) - F(2,3)| = 1, times (2*0+1)^2 = 1
    feat = torch.arange(8.0).repeat(5, 1)[None, None]
    assert float(dd.motion_supervision_loss(feat, torch.tensor([[2.0, 2.0]]), torch.tensor([[2.0, 6.0]]), 0)) == 1.0
    # r_m = 1: 3x3 patch, every cell differs by 1 from its right neighbour -> mean 1, times 9
    assert float(dd.motion_supervision_loss(feat, torch.tensor([[2.0, 2.0]]), torch.tensor([[2.0, 6.0]]), 1)) == 9.0
    # within reach (distance 1.9 < 2): no term at all
    assert dd.motion_supervision_loss(feat, torch.tensor([[2.0, 2.0]]), torch.tensor([[2.0, 3.9]]), 1) == 0.0


def test_mask_regulariser_by_hand():
    x = torch.zeros(1, 2, 2, 2)
    x0 = torch.ones(1, 2, 2, 2)
    mask = torch.tensor([[True, False], [False, False]])
    # 3 frozen cells x 2 channels x |0 - 1| = 6, times lam
    assert float(dd.mask_regulariser(x, x0, mask, 0.5)) == 3.0


# -- tracking and stop rule ------------------------------------------------------------------------


def test_track_points_finds_the_planted_feature_and_respects_the_window():
    g = torch.Generator().manual_seed(1)
    feat0 = torch.rand(1, 4, 16, 16, generator=g)
    feat1 = torch.rand(1, 4, 16, 16, generator=g) + 5.0  # every cell far from feat0
    feat1[0, :, 7, 9] = feat0[0, :, 5, 6]  # the handle's feature moved to (7, 9)
    handles = torch.tensor([[5.0, 6.0]])
    out = dd.track_points(feat0, feat1, handles, handles.clone(), r_p=3)
    assert out.tolist() == [[7.0, 9.0]]
    assert handles.tolist() == [[5.0, 6.0]]  # input untouched
    # outside the 7x7 window: not found, the best cell inside is taken instead
    feat1b = torch.rand(1, 4, 16, 16, generator=g) + 5.0
    feat1b[0, :, 12, 6] = feat0[0, :, 5, 6]
    out_b = dd.track_points(feat0, feat1b, handles, handles.clone(), r_p=3)
    assert abs(out_b[0, 0] - 5) <= 3 and abs(out_b[0, 1] - 6) <= 3
    assert out_b.tolist() == ref_track(feat0, feat1b, handles, handles, 3).tolist()


def test_track_points_matches_brute_force_reference():
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        feat0 = torch.randn(1, 3, 10, 13, generator=g)
        feat1 = feat0 + 0.8 * torch.randn(1, 3, 10, 13, generator=g)
        init = torch.randint(0, 10, (3, 2), generator=g).float()
        cur = torch.stack([torch.randint(0, 10, (3,), generator=g), torch.randint(0, 13, (3,), generator=g)], 1).float()
        assert dd.track_points(feat0, feat1, cur, init, 2).tolist() == ref_track(feat0, feat1, cur, init, 2).tolist()


def test_handles_reached_uses_strict_two_pixels():
    t = torch.tensor([[10.0, 10.0], [0.0, 0.0]])
    assert dd.handles_reached(torch.tensor([[11.0, 11.0], [1.9, 0.0]]), t)   # 1.41 and 1.9 < 2
    assert not dd.handles_reached(torch.tensor([[12.0, 10.0], [0.0, 0.0]]), t)  # 2.0 is not < 2


# -- the loop --------------------------------------------------------------------------------------


def test_loop_matches_float64_reference_loop():
    forward = toy_model(seed=4)
    g = torch.Generator().manual_seed(5)
    z = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
    handles = torch.tensor([[4.0, 4.0], [12.0, 10.0]])
    targets = torch.tensor([[4.0, 10.0], [8.0, 12.0]])
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[1:7, 1:7] = True
    settings = dd.DragSettings(steps=12, lr=0.05, lam=0.2, r_m=1, r_p=2)
    res = dd.optimise_latent(forward, z, handles, targets, mask, settings)
    z_ref, hist_ref = ref_loop(forward, z, handles, targets, mask, 12, 0.05, 0.2, 1, 2)
    assert [h.tolist() for h in res.history] == [h.tolist() for h in hist_ref]
    # float32 d_i / bilinear weights (as the official code) against float64 ones: ~1e-7 per step
    torch.testing.assert_close(res.z, z_ref, rtol=0, atol=5e-6)
    assert res.z.dtype == torch.float64 and not res.z.requires_grad
    assert float((res.z - z).abs().max()) > 0.1  # it moved, by far more than the tolerance
    assert res.iterations == len(res.history) and res.steps_taken == res.iterations - int(res.reached)


def test_first_mask_gradient_is_exactly_zero():
    """x_{t-1}(z_0) comes from the loop's own first forward: the mask term's first gradient is 0,
    so the first Adam step equals the one without a mask."""
    forward = toy_model(seed=6, dtype=torch.float32)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    handles, targets = torch.tensor([[6.0, 6.0]]), torch.tensor([[6.0, 12.0]])
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2:6, 2:7] = True
    one = dd.DragSettings(steps=1, lr=0.01, lam=10.0)
    with_mask = dd.optimise_latent(forward, z, handles, targets, mask, one)
    without = dd.optimise_latent(forward, z, handles, targets, None, one)
    assert torch.equal(with_mask.z, without.z)
    assert with_mask.losses == without.losses
    two = dd.DragSettings(steps=3, lr=0.01, lam=10.0)
    assert not torch.equal(dd.optimise_latent(forward, z, handles, targets, mask, two).z,
                           dd.optimise_latent(forward, z, handles, targets, None, two).z)


def test_only_z_gets_a_gradient():
    """Network weights that require grad (as ComfyUI's UNet weights do) get no gradient and no .grad
    from the loop, with or without a loss scaler, and the result is the one with frozen weights."""
    g = torch.Generator().manual_seed(11)
    conv1, conv2 = Conv2d(4, 6, 3, padding=1), Conv2d(4, 4, 3, padding=1)
    with torch.no_grad():
        for p in (*conv1.parameters(), *conv2.parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    params = [*conv1.parameters(), *conv2.parameters()]

    def forward(z):
        feat = F.interpolate(torch.tanh(conv1(z)), size=(2 * z.shape[-2], 2 * z.shape[-1]), mode="bilinear")
        return z + conv2(z), feat

    z = torch.randn(1, 4, 8, 8, generator=g)
    handles, targets = torch.tensor([[6.0, 6.0]]), torch.tensor([[6.0, 12.0]])
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2:6, 2:7] = True
    settings = dd.DragSettings(steps=3, lr=0.01, lam=1.0)
    trainable = dd.optimise_latent(forward, z, handles, targets, mask, settings)
    assert all(p.requires_grad and p.grad is None for p in params)
    scaled = dd.optimise_latent(forward, z, handles, targets, mask, settings,
                                compute_dtype=torch.float16)
    assert all(p.grad is None for p in params)
    for p in params:
        p.requires_grad_(False)
    frozen = dd.optimise_latent(forward, z, handles, targets, mask, settings)
    assert trainable.steps_taken == 3 and torch.equal(trainable.z, frozen.z)
    torch.testing.assert_close(scaled.z, frozen.z, rtol=0, atol=1e-6)


def test_handle_on_target_stops_at_once_and_keeps_the_latent():
    forward = toy_model(seed=8, dtype=torch.float32)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    pts = torch.tensor([[5.0, 5.0], [9.0, 3.0]])
    calls = []
    res = dd.optimise_latent(forward, z, pts, pts.clone(), torch.ones(8, 8, dtype=torch.bool),
                             dd.DragSettings(steps=20), on_iteration=lambda i, r: calls.append(i))
    assert res.reached and res.iterations == 1 and res.steps_taken == 0 and calls == [0]
    assert torch.equal(res.z, z) and res.handles.tolist() == pts.tolist()


def test_a_blob_is_dragged_and_tracked():
    """Features = the latent itself (resized): motion supervision must carry the blob towards the
    target and point tracking must follow it."""
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    blob = torch.exp(-((yy - 6) ** 2 + (xx - 5) ** 2) / 4.0)
    z = torch.stack([blob, 0.5 * blob, yy / 16, xx / 16])[None]

    def forward(code):
        return code, F.interpolate(code, size=(32, 32), mode="bilinear")

    handles, targets = torch.tensor([[12.0, 10.0]]), torch.tensor([[12.0, 20.0]])
    res = dd.optimise_latent(forward, z, handles, targets, None, dd.DragSettings(steps=60, lr=0.05, r_p=3))
    start = float((handles - targets).norm())
    end = float((res.handles - targets).norm())
    assert end < start - 4, (start, end, [h.tolist() for h in res.history])
    # the blob's peak moved right in the latent
    peak_col = int(res.z[0, 0].sum(0).argmax())
    assert peak_col > 5


def test_reference_start_tracks_along_the_path():
    """Given the unedited latent as reference and a latent where the content already moved
    (as after FastDrag's warp), the first iteration finds the handle on its way to the target."""
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")

    def scene(col):
        blob = torch.exp(-((yy - 8) ** 2 + (xx - col) ** 2) / 3.0)
        return torch.stack([blob, blob * blob, yy / 16, 0 * yy])[None]

    def forward(code):
        return code, F.interpolate(code, size=(32, 32), mode="bilinear")

    handles, targets = torch.tensor([[16.0, 8.0]]), torch.tensor([[16.0, 24.0]])
    res = dd.optimise_latent(forward, scene(9.0), handles, targets, None, dd.DragSettings(steps=1),
                             reference=scene(4.0))
    # the content of the handle (col 8 on the grid = latent col 4) now sits at latent col 9 = grid 18
    assert res.history[1].tolist() == [[16.0, 18.0]]


def test_settings_and_shapes_are_checked():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        dd.DragSettings(steps=0)
    with pytest.raises(ValueError, match="lr"):
        dd.DragSettings(lr=0)
    with pytest.raises(ValueError, match="one latent"):
        dd.optimise_latent(toy_model(), torch.zeros(2, 4, 8, 8), torch.zeros(1, 2), torch.ones(1, 2), None)
    with pytest.raises(ValueError, match="handles"):
        dd.optimise_latent(toy_model(), torch.zeros(1, 4, 8, 8), torch.zeros(0, 2), torch.zeros(0, 2), None)
