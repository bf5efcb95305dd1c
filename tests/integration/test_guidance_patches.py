"""FastDrag with model patches that add passes or replace the same attention (issue 7 item 2), in the
real server on the tiny SD1.5 model (4 decoder self-attention layers).

* PerturbedAttentionGuidance (cfg 1 and 3) and SelfAttentionGuidance (cfg 3) run a second model pass at
  the same sigma after the sampler's own one. The K/V FastDragInvert stores must be the sampler's own
  pass: with one inversion step (t = 1, the UNet sees the clean latent in every run) they must equal the
  K/V of the same inversion without the guidance node (PAG bit for bit; SAG up to the rounding of its
  own middle-block attention). Every pass is injected.
* Another pack's attn1 replace on the same decoder layers (per layer or per block) keeps running: it is
  chained and receives FastDrag's K/V.
"""

import re
import uuid

import pytest
import torch

from graphs import base, edit_node, invert_node, points_json, points_node, sample_node, save_node

LAYERS = 4
DRAG = [((48, 48), (64, 60))]
GUIDANCE = {
    "pag": ("PerturbedAttentionGuidance", {"scale": 3.0}),
    "sag": ("SelfAttentionGuidance", {"scale": 0.5, "blur_sigma": 2.0}),
}


def load(path):
    return torch.load(path, weights_only=False)


def save_kv_tensors(path, **tensors):
    node = save_node(path, **tensors)
    node["inputs"]["kv_tensors"] = True
    return node


def stats(text, extra=False):
    pat = (r"extra passes at the same sigmas \(e\.g\. PAG, SAG\) injected too: (\d+) hits, (\d+) uncond->cond "
           r"fallbacks, (\d+) misses" if extra else r"(\d+) hits, (\d+) uncond->cond fallbacks, (\d+) misses")
    m = re.search(pat, text)
    assert m, text
    return tuple(int(g) for g in m.groups())


@pytest.mark.parametrize("guidance,cfg", [("pag", 1.0), ("pag", 3.0), ("sag", 3.0)])
def test_guidance_passes_do_not_overwrite_the_captured_kv(server, tmp_path, guidance, cfg):
    node, inputs = GUIDANCE[guidance]
    f = {k: str(tmp_path / f"{k}.pt") for k in ("plain1", "guided1", "guided3", "samp")}
    neg = ("neg", 0) if cfg != 1.0 else None
    p = base(server.ckpt_name)
    p["g"] = {"class_type": node, "inputs": {"model": ["ckpt", 0], **inputs}}
    # one inversion step: t = 1, the UNet sees the clean latent with or without the guidance node
    p["plain1"] = invert_node(strength=0.1, cfg=cfg, negative=neg)
    p["guided1"] = invert_node(model=("g", 0), strength=0.1, cfg=cfg, negative=neg)
    p["guided3"] = invert_node(model=("g", 0), strength=0.3, cfg=cfg, negative=neg)
    p["samp"] = sample_node(("guided3", 0), ("guided3", 1), model=("g", 0), cfg=cfg, negative=neg)
    p["s1"] = save_kv_tensors(f["plain1"], latent=("plain1", 0), kv=("plain1", 1))
    p["s2"] = save_kv_tensors(f["guided1"], latent=("guided1", 0), kv=("guided1", 1))
    p["s3"] = save_node(f["guided3"], kv=("guided3", 1))
    p["s4"] = save_node(f["samp"], latent=("samp", 0))
    entry = server.run(p)
    r = {k: load(v) for k, v in f.items()}
    chunks = 1 if cfg == 1.0 else 2

    plain, guided = r["plain1"]["kv"], r["guided1"]["kv"]
    assert sorted(plain) == sorted(guided) and len(plain) == LAYERS * chunks
    # PAG's main pass is the plain model's: bit-equal. SAG computes the main pass's middle-block attention
    # itself (to record its map), which rounds differently: within 4e-3 (2-4 float16 ulps at |K| ~ 2-3),
    # whereas SAG's degraded pass, when it overwrote the cond entries, differed by 0.15-0.96.
    atol = 0.0 if guidance == "pag" else 4e-3
    for key in plain:
        for a, b in zip(plain[key], guided[key]):
            assert torch.allclose(a.float(), b.float(), rtol=0.0, atol=atol), (key, float((a - b).abs().max()))
    # the guidance pass ran (once per layer and step), its writes were not stored, and it still acts:
    # the guided inversion step moves the latent elsewhere
    assert r["guided1"]["kv_repeats"] == LAYERS and r["guided1"]["kv_writes"] == LAYERS * chunks
    diff = float((r["guided1"]["latent"] - r["plain1"]["latent"]).abs().max())
    print(f"{guidance} cfg {cfg}: inverted latent changed by max {diff:.3e}")
    assert diff > 1e-6

    k = 3
    g3 = r["guided3"]
    assert len(g3["kv_keys"]) == g3["kv_writes"] == LAYERS * k * chunks and g3["kv_repeats"] == LAYERS * k
    text = " ".join(server.texts(entry, "guided3"))
    assert f"{k} extra passes at the same sigmas" in text and f"their {LAYERS * k} K/V writes ignored" in text, text

    # injection: the sampler's pass and the guidance pass both get the stored K/V
    text = " ".join(server.texts(entry, "samp"))
    assert stats(text) == (LAYERS * k * chunks, 0, 0), text
    assert stats(text, extra=True) == (LAYERS * k, 0, 0), text


@pytest.mark.parametrize("mode", ["site", "block"])
def test_other_packs_attn1_replace_is_chained(server, tmp_path, mode):
    """The other patch runs on every decoder attention call of the edit (inversion and sampling) and,
    while sampling, receives FastDrag's stored K; the edit equals the one without it (it computes
    plain attention)."""
    tag = f"{mode}-{uuid.uuid4().hex[:8]}"
    f = {k: str(tmp_path / f"{k}.pt") for k in ("plain", "other", "calls", "kv")}
    p = base(server.ckpt_name)
    p["other"] = {"class_type": "FastDragTestAttn1Replace", "inputs": {"model": ["ckpt", 0], "tag": tag,
                                                                        "mode": mode, "scale": 1.0}}
    p["pts"] = points_node(points_json(DRAG))
    p["inv"] = invert_node(model=("other", 0), strength=0.3)
    p["warp"] = {"class_type": "FastDragWarp", "inputs": {"latent": ["inv", 0], "drag": ["pts", 0],
                                                          "handle_on_cell": "paper"}}
    p["fill"] = {"class_type": "FastDragBNNI", "inputs": {"latent": ["warp", 0], "null_mask": ["warp", 1],
                                                          "fill": "bnni"}}
    p["samp"] = sample_node(("fill", 0), ("inv", 1), model=("other", 0))
    p["e_plain"] = edit_node(strength=0.3)
    p["report"] = {"class_type": "FastDragTestAttn1Report", "inputs": {"latent": ["samp", 0], "tag": tag,
                                                                        "path": f["calls"]}}
    p["s1"] = save_node(f["plain"], latent=("e_plain", 1))
    p["s2"] = save_node(f["other"], latent=("samp", 0))
    p["s3"] = save_kv_tensors(f["kv"], kv=("inv", 1))
    server.run(p)
    r = {k: load(v) for k, v in f.items()}
    k = 3
    assert r["calls"]["calls"] == 2 * LAYERS * k, r["calls"]["calls"]
    assert torch.equal(r["plain"]["latent"], r["other"]["latent"])
    # sampling calls (the second half), in UNet order: t descending, decoder layers in order
    kv = r["kv"]["kv"]
    layers = sorted({key[0] for key in kv}, key=lambda site: site[1])
    timesteps = sorted({key[1] for key in kv}, reverse=True)
    expected = [float(kv[(layer, t, 0)][0].double().sum()) for t in timesteps for layer in layers]
    assert r["calls"]["k_sums"][LAYERS * k:] == expected


def test_several_conditioning_entries_per_chunk_warn(server):
    """ConditioningCombine gives the positive two entries, batched as chunks [0, 0] in one call: the first
    entry's K/V are kept and the node says so (log and text), instead of silently overwriting."""
    p = base(server.ckpt_name)
    p["both"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["pos", 0],
                                                                 "conditioning_2": ["neg", 0]}}
    p["inv"] = invert_node(positive=("both", 0), strength=0.1)
    p["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["inv", 1]}}
    entry = server.run(p)
    text = " ".join(server.texts(entry, "inv"))
    assert f"WARNING: {LAYERS} K/V writes repeated a (layer, timestep, chunk) within one model pass" in text, text
    assert "ConditioningCombine" in text and f"{LAYERS} K/V entries = {LAYERS} layers x 1 timesteps" in text
    assert "K/V writes repeated a (layer, timestep, chunk) within one model pass" in server.log_text()
