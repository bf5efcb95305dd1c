"""DragDiffusionLoRA in the real ComfyUI server (tiny random checkpoints, CPU).

The noise-prediction loss is measured with core nodes only: ``SamplerCustom`` (euler, cfg 1, one step
from sigma to 0, fixed noise seed) returns the model's x0 prediction D for x = x0 + sigma eps, and the official
loss mean((eps_hat - eps)²) equals mean((D - x0)²) / sigma² in model space (fastdrag_core.lora.loss_weights).

Run: COMFYUI_ROOT=~/.cache/comfy-harness/ComfyUI python3 -m pytest tests/integration/test_lora_server.py -v
"""

import json
import os
import struct
import time

import pytest
import torch

from comfy_server import PromptError, pattern_png

IMAGE = "fastdrag_dd_lora.png"        # 96 x 64 px -> latent 8 x 12: 8 x 8 crops at 5 column offsets
SCALE = 0.18215                       # SD1.x latent scale (model space = VAE latent x SCALE)
EVAL = [(200, 11), (700, 12)]  # (timestep, noise seed) of the fixed loss measurement
TRAIN = {"steps": 4, "learning_rate": 5e-3, "rank": 4, "batch_size": 2, "seed": 0}
LAYERS_TINY = 56                      # the harness's tiny SD1.5: 7 transformer blocks x (attn1 + attn2) x 4


def sd_sigma(t: int) -> float:
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1.0 - betas, 0)[t]
    return float(((1 - ac) / ac).sqrt())


def read_safetensors(path):
    """(tensors, metadata) of a .safetensors file, read with the standard library (format: u64 header
    length, JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {...}}, raw data)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    tensors = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        tensors[k] = torch.frombuffer(bytearray(data[a:b]), dtype=dtypes[v["dtype"]]).reshape(v["shape"])
    return tensors, header.get("__metadata__", {})


def safetensors_bytes(tensors, metadata=None):
    """A .safetensors file (float32 tensors) written with the standard library."""
    header, blobs, offset = {}, [], 0
    for k, t in tensors.items():
        b = t.detach().to(torch.float32).contiguous().numpy().tobytes()
        header[k] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def graph(ckpt, image=IMAGE):
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a yellow square and a blue disc",
                                                           "clip": ["ckpt", 1]}},
        "img": {"class_type": "LoadImage", "inputs": {"image": image}},
        "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["ckpt", 2]}},
    }


def lora_node(model=("ckpt", 0), latent=("enc", 0), save_name=None, **settings):
    inputs = {"model": list(model), "positive": ["pos", 0], "latent": list(latent), **TRAIN, **settings}
    if save_name is not None:
        inputs["save_name"] = save_name
    return {"class_type": "DragDiffusionLoRA", "inputs": inputs}


def save(path, **latents):
    return {"class_type": "FastDragTestSave", "inputs": {"path": path, **{k: list(v) for k, v in latents.items()}}}


def add_eval(p, tag, model, outdir, evals=EVAL, batch=2):
    """x0 predictions D of ``model`` at each (t, seed) of ``evals``, for a batch of ``batch`` noises."""
    p.setdefault("rep", {"class_type": "RepeatLatentBatch", "inputs": {"samples": ["enc", 0], "amount": batch}})
    p.setdefault("euler", {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}})
    p.setdefault("save_x0", save(os.path.join(outdir, "x0.pt"), latent=("rep", 0)))
    for t, seed in evals:
        p[f"sig_{t}"] = {"class_type": "ManualSigmas", "inputs": {"sigmas": f"{sd_sigma(t):.9f}, 0"}}
        p[f"{tag}_sc_{t}"] = {"class_type": "SamplerCustom", "inputs": {
            "model": list(model), "add_noise": True, "noise_seed": seed, "cfg": 1.0, "positive": ["pos", 0],
            "negative": ["pos", 0], "sampler": ["euler", 0], "sigmas": [f"sig_{t}", 0], "latent_image": ["rep", 0]}}
        p[f"{tag}_save_{t}"] = save(os.path.join(outdir, f"{tag}_{t}.pt"), latent=(f"{tag}_sc_{t}", 1))


def predictions(outdir, tag, evals=EVAL):
    return {t: torch.load(os.path.join(outdir, f"{tag}_{t}.pt"))["latent"] for t, _ in evals}


def losses(outdir, tag, evals=EVAL):
    """The official eps-MSE at each evaluation timestep: mean((D - x0)²) / sigma² in model space."""
    x0 = torch.load(os.path.join(outdir, "x0.pt"))["latent"].double() * SCALE
    return {t: float((((d.double() * SCALE) - x0) ** 2).mean()) / sd_sigma(t) ** 2
            for t, d in predictions(outdir, tag, evals).items()}


def loras_dir(server):
    return os.path.join(server.base, "models", "loras")


def assert_node_error(server, prompt, needle):
    with pytest.raises(PromptError) as e:
        server.run(prompt)
    assert e.value.kind == "execution" and e.value.node_type == "DragDiffusionLoRA", e.value
    assert "DragDiffusionLoRA:" in e.value.message and needle in e.value.message, e.value.message


@pytest.fixture(scope="module")
def image(server):
    server.write_input(IMAGE, pattern_png(96, 64))
    return IMAGE


@pytest.fixture(scope="module")
def trained(server, image, tmp_path_factory):
    """Prompt 1 trains (saving ``..._a``) and measures base and trained models; prompt 2 measures the
    saved file through LoraLoaderModelOnly and the steps-0 passthrough (after the training ran)."""
    out = str(tmp_path_factory.mktemp("dd_lora"))
    t0 = time.time()
    p = graph(server.ckpt_name)
    p["lora"] = lora_node(save_name="fastdrag_it_dd_lora_a")
    add_eval(p, "base", ("ckpt", 0), out)
    add_eval(p, "trained", ("lora", 0), out)
    entry = server.run(p)
    p2 = graph(server.ckpt_name)
    p2["load"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
        "model": ["ckpt", 0], "lora_name": "fastdrag_it_dd_lora_a.safetensors", "strength_model": 1.0}}
    p2["pass"] = lora_node(steps=0)
    add_eval(p2, "loaded", ("load", 0), out)
    add_eval(p2, "passthrough", ("pass", 0), out)
    server.run(p2)
    print(f"trained fixture: {time.time() - t0:.1f} s")
    return out, entry


def test_lora_lowers_the_noise_prediction_loss(server, trained):
    out, entry = trained
    before, after = losses(out, "base"), losses(out, "trained")
    print("loss before -> after:", {t: f"{before[t]:.4f} -> {after[t]:.4f}" for t in before})
    print(server.texts(entry, "lora"))
    for t in before:
        assert after[t] < before[t], (t, before[t], after[t])


def test_only_the_lora_factors_got_gradients(server, trained):
    # the node releases (and logs) any gradient that reached the frozen UNet weights
    assert "should be frozen" not in server.log_text()


def test_saved_lora_loads_to_the_same_model(trained):
    """LoraLoaderModelOnly(file, 1.0) on the input model = the node's model. Both apply the same float32
    tensors through comfy.sd.load_lora_for_models, so the predictions should agree to the last bit;
    the tolerance (1e-6 of the largest |D|) only allows a different float32 summation order."""
    out, _ = trained
    mine, loaded, base = predictions(out, "trained"), predictions(out, "loaded"), predictions(out, "base")
    for t in mine:
        diff = float((mine[t] - loaded[t]).abs().max())
        change = float((mine[t] - base[t]).abs().max())
        print(f"t={t}: node vs LoraLoaderModelOnly max |diff| {diff:.2e}; LoRA changed D by up to {change:.2e}")
        assert change > 1e-4, "the LoRA did not change the model: the round trip would prove nothing"
        assert diff <= 1e-6 * float(mine[t].abs().max()), diff


def test_zero_steps_passes_through_and_training_left_the_input_model_alone(trained):
    out, _ = trained
    base, passthrough = predictions(out, "base"), predictions(out, "passthrough")
    for t in base:
        assert torch.equal(base[t], passthrough[t]), t


def test_first_step_loss_equals_an_independent_computation(server, trained, tmp_path):
    """Step 1 runs the untrained model (B = 0), so its loss can be recomputed outside the node: the data
    draws of seed 0 (fastdrag_core.lora.draw_step), x = x0 + sigma_t eps built here, fed to the base model by
    LoadLatent + SamplerCustom (no added noise, one euler step from sigma_t to 0 returns D), and the
    official mean((eps_hat - eps)²) = mean((D - x0)²) / sigma². Checks the crops, draw order, sigma(t), noise scaling,
    latent scaling and loss weighting of the node against the equations, not against its own output."""
    from fastdrag_core import lora as core

    out, _ = trained
    _, meta = read_safetensors(os.path.join(loras_dir(server), "fastdrag_it_dd_lora_a.safetensors"))
    node_losses = json.loads(meta["fastdrag_losses"])
    assert len(node_losses) == TRAIN["steps"]
    x0_raw = torch.load(os.path.join(out, "x0.pt"))["latent"][:1].float()          # [1, 4, 8, 12]
    _, c, h, w = x0_raw.shape
    d = core.draw_step(torch.Generator().manual_seed(TRAIN["seed"]), c, h, w, TRAIN["batch_size"])
    x0 = core.crop_batch(x0_raw * SCALE, d.origins, d.size)
    sig = [sd_sigma(int(t)) for t in d.timesteps]
    p = graph(server.ckpt_name)
    p["euler"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    files = []
    for b in range(TRAIN["batch_size"]):
        x = x0[b:b + 1] + sig[b] * d.noise[b:b + 1]
        name = f"fastdrag_dd_lora_step1_{b}.latent"
        server.write_input(name, safetensors_bytes({"latent_tensor": x / SCALE,
                                                    "latent_format_version_0": torch.tensor([0.0])}))
        p[f"ll{b}"] = {"class_type": "LoadLatent", "inputs": {"latent": name}}
        p[f"sig{b}"] = {"class_type": "ManualSigmas", "inputs": {"sigmas": f"{sig[b]:.9f}, 0"}}
        p[f"sc{b}"] = {"class_type": "SamplerCustom", "inputs": {
            "model": ["ckpt", 0], "add_noise": False, "noise_seed": 0, "cfg": 1.0, "positive": ["pos", 0],
            "negative": ["pos", 0], "sampler": ["euler", 0], "sigmas": [f"sig{b}", 0], "latent_image": [f"ll{b}", 0]}}
        files.append(str(tmp_path / f"d{b}.pt"))
        p[f"save{b}"] = save(files[-1], latent=(f"sc{b}", 1))
    server.run(p)
    per_item = []
    for b, f in enumerate(files):
        den = torch.load(f)["latent"].double() * SCALE
        per_item.append(float(((den - x0[b:b + 1].double()) ** 2).mean()) / sig[b] ** 2)
    ref = sum(per_item) / len(per_item)
    assert any(left > 0 for _, left in d.origins), "pick a seed/image whose first step crops off the origin"
    print(f"step-1 loss: node {node_losses[0]:.7f}, independent {ref:.7f} (t = {d.timesteps.tolist()}, "
          f"crops at {list(d.origins)})")
    assert abs(node_losses[0] - ref) <= 1e-4 * ref


def test_saved_file_layout(server, trained):
    tensors, meta = read_safetensors(os.path.join(loras_dir(server), "fastdrag_it_dd_lora_a.safetensors"))
    prefixes = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in tensors}
    assert len(tensors) == 3 * len(prefixes) and len(prefixes) == LAYERS_TINY
    projections = {p.rsplit("_", 1)[-1] if not p.endswith("out_0") else "out_0" for p in prefixes}
    assert projections == {"q", "k", "v", "out_0"}
    assert all(p.startswith("lora_unet_") and ("_attn1_" in p or "_attn2_" in p) for p in prefixes)
    assert any(p.startswith("lora_unet_down_blocks_") for p in prefixes)  # diffusers names, as kohya files
    for p in prefixes:
        up, down, alpha = (tensors[f"{p}.lora_up.weight"], tensors[f"{p}.lora_down.weight"], tensors[f"{p}.alpha"])
        assert up.dtype == down.dtype == torch.float32
        assert up.shape[1] == down.shape[0] == TRAIN["rank"] and float(alpha) == TRAIN["rank"]
    assert sum(float(tensors[f"{p}.lora_up.weight"].abs().sum()) for p in prefixes) > 0
    assert meta["fastdrag_node"] == "DragDiffusionLoRA" and meta["fastdrag_steps"] == str(TRAIN["steps"])
    assert len(json.loads(meta["fastdrag_losses"])) == TRAIN["steps"]


def test_same_seed_same_lora_other_seed_other_lora(server, image):
    short = {"steps": 2, "batch_size": 1}
    p = graph(server.ckpt_name)
    p["s0"] = lora_node(save_name="fastdrag_it_dd_lora_s0", **short)
    p["s0_again"] = lora_node(save_name="fastdrag_it_dd_lora_s0_again", **short)
    p["s1"] = lora_node(save_name="fastdrag_it_dd_lora_s1", seed=1, **short)
    server.run(p)
    a, b, c = (read_safetensors(os.path.join(loras_dir(server), f"fastdrag_it_dd_lora_{n}.safetensors"))[0]
               for n in ("s0", "s0_again", "s1"))
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "same seed, different LoRA"
    assert not all(torch.equal(a[k], c[k]) for k in a if k.endswith(".weight")), "seed 1 gave the seed-0 LoRA"


def test_sd15_layout_full_attention_set(server, image):
    """SD1.5's 16 transformer blocks: 128 projections, saved under diffusers names that ComfyUI's key map
    loads (load_lora_for_models, which the node uses to apply the LoRA, logs every key it cannot place;
    the LoraLoaderModelOnly round trip itself is checked on the tiny model above)."""
    ckpt = server.add_checkpoint("sd15_layout")
    log_start = len(server.log_text())
    p = graph(ckpt)
    p["lora"] = lora_node(("ckpt", 0), save_name="fastdrag_it_dd_lora_layout", steps=1, batch_size=1,
                          learning_rate=2e-2)
    entry = server.run(p)
    print(server.texts(entry, "lora"))
    tensors, _ = read_safetensors(os.path.join(loras_dir(server), "fastdrag_it_dd_lora_layout.safetensors"))
    prefixes = {k.rsplit(".", 2)[0] for k in tensors if k.endswith(".weight")}
    assert len(prefixes) == 128
    for name in ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                 "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k",
                 "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn1_to_out_0"):
        assert name in prefixes, name
    # every up factor moved in the one AdamW step except the mid block's attn1 q and k: the 8 x 8 crop is
    # a single token there, and softmax over one key ignores q and k (zero gradient)
    unmoved = {q for q in prefixes if float(tensors[f"{q}.lora_up.weight"].abs().max()) == 0}
    assert unmoved <= {"lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q",
                       "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_k"}, unmoved
    # Adam's first step from B = 0 is lr · g / (|g| + 1e-8) per entry: never above lr, and close to lr
    # wherever |g| >> 1e-8 (plain SGD at this lr would move them by ~lr · |g|, orders of magnitude less)
    ratio = torch.cat([tensors[f"{q}.lora_up.weight"].flatten() for q in prefixes - unmoved]).abs() / 2e-2
    print(f"first AdamW step |B| / lr: median {ratio.median():.4f}, max {ratio.max():.6f}")
    assert float(ratio.max()) <= 1 + 1e-6 and float(ratio.median()) > 0.9
    log = server.log_text()[log_start:]
    assert "lora key not loaded" not in log and "NOT LOADED" not in log


def test_cancel_stops_within_a_step(server, image):
    p = graph(server.ckpt_name)
    p["lora"] = lora_node(steps=5000, seed=7)
    p["out"] = {"class_type": "PreviewAny", "inputs": {"source": ["lora", 0]}}
    pid = server.submit(p)
    t0 = time.time()
    while not server.running() and time.time() - t0 < 60:
        time.sleep(0.05)
    time.sleep(4.0)  # inside the loop (steps take about 1 s here)
    t_int = time.time()
    server.interrupt()
    entry = server.wait(pid, timeout=120, raise_errors=False)
    elapsed = time.time() - t_int
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, kinds
    assert dict(entry["status"]["messages"])["execution_interrupted"]["node_type"] == "DragDiffusionLoRA"
    print(f"interrupt -> prompt ended in {elapsed:.2f}s")
    assert elapsed < 8.0, f"took {elapsed:.1f}s to stop"


# -- bad input: refused before any training, with the node's name and the value ---------------------------


def test_latent_batch_of_two_is_refused(server, image):
    p = graph(server.ckpt_name)
    p["rep2"] = {"class_type": "RepeatLatentBatch", "inputs": {"samples": ["enc", 0], "amount": 2}}
    p["lora"] = lora_node(latent=("rep2", 0))
    assert_node_error(server, p, "latent batch is 2")


def test_wrong_channel_count_is_refused(server, image):
    p = graph(server.ckpt_name)
    p["e16"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    p["lora"] = lora_node(latent=("e16", 0))
    assert_node_error(server, p, "latent has 16 channels but this model's latents have 4")


def test_empty_latent_is_refused(server, image):
    p = graph(server.ckpt_name)
    p["e4"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    p["lora"] = lora_node(latent=("e4", 0))
    assert_node_error(server, p, "latent is all zeros")


def test_inverted_latent_is_refused(server, image):
    p = graph(server.ckpt_name)
    p["inv"] = {"class_type": "FastDragInvert", "inputs": {"model": ["ckpt", 0], "positive": ["pos", 0],
                                                           "latent": ["enc", 0], "steps": 10, "strength": 0.1,
                                                           "cfg": 1.0}}
    p["lora"] = lora_node(latent=("inv", 0))
    assert_node_error(server, p, "comes from FastDragInvert")


def test_zero_steps_with_save_name_is_refused(server, image):
    p = graph(server.ckpt_name)
    p["lora"] = lora_node(steps=0, save_name="nothing")
    assert_node_error(server, p, "steps is 0 (no LoRA) but save_name is 'nothing'")


@pytest.mark.parametrize("name", ["../outside", "/tmp/abs"])
def test_save_name_outside_the_loras_folder_is_refused(server, image, name):
    p = graph(server.ckpt_name)
    p["lora"] = lora_node(save_name=name)
    assert_node_error(server, p, f"save_name {name!r} must be a file name inside the loras folder")


def test_foreign_lora_file_is_never_overwritten(server, image):
    path = os.path.join(loras_dir(server), "someone_elses.safetensors")
    with open(path, "wb") as f:
        f.write(b"not ours")
    p = graph(server.ckpt_name)
    p["lora"] = lora_node(save_name="someone_elses")
    assert_node_error(server, p, "already exists and was not written by DragDiffusionLoRA")
    with open(path, "rb") as f:
        assert f.read() == b"not ours"


def test_unsupported_model_sampling_is_refused(server, image):
    p = graph(server.ckpt_name)
    p["edm"] = {"class_type": "ModelSamplingContinuousEDM", "inputs": {"model": ["ckpt", 0], "sampling": "edm",
                                                                       "sigma_max": 120.0, "sigma_min": 0.002}}
    p["lora"] = lora_node(model=("edm", 0))
    # the pack's one rule, naming the node's method and what it supports (SDXL included)
    assert_node_error(server, p, "DragDiffusionLoRA: this SD1.x model uses continuous-time EDM sampling "
                                 "(ModelSamplingContinuousEDM")
    p["lora"]["inputs"]["seed"] = 1
    assert_node_error(server, p, "the identity LoRA supports SD1.x, SD2.x (eps and v-prediction) and "
                                 "SDXL-family (eps and v-prediction) checkpoints")
