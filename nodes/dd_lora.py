"""DragDiffusionLoRA: DragDiffusion's identity-preserving LoRA, fine-tuned on the image's latent.

The maths (crops, random draws, factor init, alpha convention, loss) is ``fastdrag_core.lora``; this
module runs it with ComfyUI's own training pieces, as ``comfy_extras/nodes_train.py::TrainLoraNode``:

* The trainable layers sit on ``to_q``, ``to_k``, ``to_v`` and ``to_out.0`` of every attention module
  (``CrossAttention``: attn1 and attn2) of the UNet, nothing else: W' = W + (alpha/r) B A with alpha = r,
  i.e. W + B A as the official code. For the training loop only, each projection gets a forward hook
  that adds B (A x) to its output (:class:`LoraBranch`, ``core.lora_branch``): the same layer, computed
  on the activations, so no step forms a weight-sized W' (ComfyUI's ``LoraDiff`` weight adapter would
  form, and keep for the backward pass, W + B A of all 128 projections at every step, and ComfyUI's
  cast would copy each W first). The hooks are removed when the loop ends, on every path out.
* ComfyUI loads weights under ``torch.inference_mode`` as Parameters that require grad; autograd
  can neither save inference tensors for backward nor should it differentiate the base weights. For
  the training loop only, :func:`fastdrag_core.frozen_weights.frozen_parameters` gives every UNet
  parameter a stand-in on the same memory that is an ordinary tensor and requires no grad: no weight
  is copied, the originals are back when the loop ends, and nothing is kept after the node.
* Gradients, loss scaling (float16 compute) and the skipped-step rule are the pack's one precision
  rule, :class:`fastdrag_core.grad_step.GradientStep`, shared with DragDiffusionDrag.
* The loop is a ``comfy.samplers.Sampler`` run by ComfyUI's ``TrainGuider`` (full load, cfg 1), so
  the conditioning machinery (SDXL's pooled/size conds included), model patches and wrappers apply.
* The result is applied with ``comfy.sd.load_lora_for_models`` (the code path of core
  ``LoraLoaderModelOnly``) from the same tensors that ``save_name`` writes, so the returned model
  and ``LoraLoaderModelOnly(saved file, 1.0)`` on the input model are the same model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from comfy_api.latest import io, ui

import comfy.model_management
import comfy.sd
import comfy.utils
import folder_paths

from . import comfy_adapter

from ..fastdrag_core import lora as core
from ..fastdrag_core.frozen_weights import frozen_parameters
from ..fastdrag_core.grad_step import GradientStep
from .dragdiffusion import unet_compute_dtype
from .invert import check_latent
from .model_support import supported_model
from .types import LATENT_TAG

log = logging.getLogger(__name__)
NODE = "DragDiffusionLoRA"
PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
FILE_TAG = "fastdrag_node"  # safetensors metadata key marking files this node wrote (and may overwrite)


# -- checks ------------------------------------------------------------------------------------------------


def lora_model_rule(model, node: str = NODE):
    """The pack's model rule (:func:`nodes.model_support.supported_model`) for the identity LoRA: SD1.x,
    SD2.x and SDXL UNets, eps or v-prediction, LCM trained as the plain eps model; others refused by name."""
    return supported_model(model, node, method="the identity LoRA")


def check_clean_latent(latent, model, node: str = NODE) -> torch.Tensor:
    """The clean [1, C, h, w] latent of one image (VAEEncode), with C the model's latent channels."""
    samples = check_latent(latent, node)
    if LATENT_TAG in latent:
        raise ValueError(f"{node}: this latent comes from FastDragInvert (noisy, at an edit timestep); the "
                         "LoRA trains on the clean latent of the image: connect the VAEEncode output")
    if samples.shape[0] != 1:
        raise ValueError(f"{node}: latent batch is {samples.shape[0]}; the identity LoRA is trained on one "
                         "image: pick one with LatentFromBatch (batch_index, length 1)")
    channels = model.get_model_object("latent_format").latent_channels
    if samples.shape[1] != channels:
        raise ValueError(f"{node}: latent has {samples.shape[1]} channels but this model's latents have "
                         f"{channels}: encode the image with this model's VAE")
    if samples.shape[2] < 1 or samples.shape[3] < 1:
        raise ValueError(f"{node}: latent is empty ({list(samples.shape)})")
    if not torch.isfinite(samples).all():
        raise ValueError(f"{node}: latent contains NaN or infinite values")
    if torch.count_nonzero(samples) == 0:
        raise ValueError(f"{node}: latent is all zeros (an EmptyLatentImage?); the LoRA learns the image: "
                         "connect the VAEEncode latent of the image")
    if latent.get("noise_mask") is not None:
        log.warning("[FastDrag] %s: the latent's noise_mask is ignored; the LoRA trains on the whole image "
                    "as the official code", node)
    return samples


MAX_FILE_NAME_BYTES = 240  # a file system's 255, less the ".<pid>.tmp" the atomic write adds


def _shown(save_name: str) -> str:
    """``save_name`` for a message: repr, at most 60 characters."""
    r = repr(save_name)
    return r if len(r) <= 60 else r[:57] + "..."


def lora_file_path(save_name: str, node: str = NODE) -> tuple[str, str]:
    """(real path, name relative to the loras folder) of ``save_name`` (".safetensors" appended if
    missing) inside the first ``loras`` folder, links resolved; every name that is not a plain
    relative file name (absolute, '..', '.', empty parts, a trailing '/', control characters such as
    NUL / newline / tab, parts over the file system's limit, a link or subfolder leading out of the
    folder, an existing folder) is refused here, before any work."""
    name = save_name.strip()
    rule = ("must be a file name inside the loras folder (subfolders allowed, no absolute path, '.' or '..', "
            "no control characters)")
    if any(ord(c) < 32 or ord(c) == 127 for c in name) or name.endswith(("/", "\\")):
        raise ValueError(f"{node}: save_name {_shown(save_name)} {rule}")
    parts = name.replace("\\", "/").split("/")
    if (os.path.isabs(name.replace("\\", "/")) or any(p in ("", ".", "..") for p in parts)
            or parts[-1] == ".safetensors"):
        raise ValueError(f"{node}: save_name {_shown(save_name)} {rule}")
    if not parts[-1].endswith(".safetensors"):
        parts[-1] += ".safetensors"
    if any(len(p.encode("utf-8", "surrogatepass")) > MAX_FILE_NAME_BYTES for p in parts):
        raise ValueError(f"{node}: save_name {_shown(save_name)} has a name part longer than "
                         f"{MAX_FILE_NAME_BYTES} bytes (with \".safetensors\"); choose a shorter name")
    base = os.path.realpath(folder_paths.get_folder_paths("loras")[0])
    path = os.path.realpath(os.path.join(base, *parts))
    if os.path.commonpath([base, path]) != base or path == base:
        raise ValueError(f"{node}: save_name {_shown(save_name)} leads out of the loras folder (through a link); "
                         "choose a name inside it")
    rel = os.path.relpath(path, base).replace(os.sep, "/")
    if os.path.isdir(path):
        raise ValueError(f"{node}: loras/{rel} is a folder; choose another save_name")
    return path, rel


# -- the trainable model -----------------------------------------------------------------------------------


class LoraBranch(torch.nn.Module):
    """The trainable factors of one projection, B = ``lora_up`` [out, r] and A = ``lora_down`` [r, in]
    (float32 masters), and the forward hook that adds DeltaW x = B (A x) (``core.lora_branch``, alpha = r)
    to the projection's output, in the dtype the UNet computes in."""

    def __init__(self, up: torch.Tensor, down: torch.Tensor):
        super().__init__()
        self.lora_up = torch.nn.Parameter(up.detach().clone())
        self.lora_down = torch.nn.Parameter(down.detach().clone())

    def add_to_output(self, module, args, output):
        x = args[0]
        delta = core.lora_branch(x, self.lora_up.to(x.dtype), self.lora_down.to(x.dtype),
                                 alpha=float(self.lora_down.shape[0]))
        return output + delta.to(output.dtype)


@dataclass
class LoraLayer:
    """One trained projection: ComfyUI module name (inside ``diffusion_model``), file key prefix, factors."""

    module: str
    key: str
    branch: LoraBranch

    def factors(self) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
        return self.branch.lora_up, self.branch.lora_down


@contextlib.contextmanager
def lora_branches(diffusion_model: torch.nn.Module, layers: list[LoraLayer]):
    """Each layer's branch hooked onto its projection of ``diffusion_model`` inside the block only."""
    handles = []
    try:
        for layer in layers:
            handles.append(diffusion_model.get_submodule(layer.module).register_forward_hook(layer.branch.add_to_output))
        yield
    finally:
        for h in handles:
            h.remove()


def attention_projections(model) -> list[str]:
    """Names of ``to_q/to_k/to_v/to_out.0`` of every CrossAttention of the UNet (attn1 and attn2), in
    module order. SD1.5: 16 transformer blocks x 2 attentions x 4 = 128."""
    dm = model.get_model_object("diffusion_model")
    names = []
    for name, mod in dm.named_modules():
        if isinstance(mod, comfy_adapter.get("CrossAttention")):
            for p in PROJECTIONS:
                sub = mod.get_submodule(p)
                if not hasattr(sub, "weight_function") or sub.weight is None or sub.weight.dim() != 2:
                    raise ValueError(f"{NODE}: {name}.{p} is not a ComfyUI linear layer; cannot train it")
                names.append(f"{name}.{p}")
    if not names:
        raise ValueError(f"{NODE}: no attention layers found in the UNet")
    return names


def lora_keys(model, modules: list[str]) -> dict[str, str]:
    """File key prefix of each module, in the kohya format with diffusers names
    (``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``) that ComfyUI, A1111
    and diffusers load; ComfyUI's own names (``lora_unet_input_blocks_1_1_...``) where the UNet has no
    diffusers mapping. Every key is checked against ComfyUI's LoRA key map for this model."""
    key_map = comfy_adapter.get("model_lora_keys_unet")(model.model, {})
    diffusers = comfy_adapter.get("unet_to_diffusers")(model.model.model_config.unet_config)
    to_diffusers = {v: k for k, v in diffusers.items() if k.endswith(".weight")}
    keys = {}
    for m in modules:
        target = f"diffusion_model.{m}.weight"
        d = to_diffusers.get(f"{m}.weight")
        key = f"lora_unet_{d[:-len('.weight')].replace('.', '_')}" if d else None
        if key is None or key_map.get(key) != target:
            key = f"lora_unet_{m.replace('.', '_')}"
        if key_map.get(key) != target:
            raise RuntimeError(f"{NODE}: no LoRA key of ComfyUI's key map loads {target}")
        keys[m] = key
    if len(set(keys.values())) != len(keys):
        raise RuntimeError(f"{NODE}: LoRA key names collide")
    return keys


def install_lora(model, settings: core.LoraTrainSettings, generator: torch.Generator):
    """A clone of ``model`` to train on, and the LoRA layers (factors initialised as the official code)
    of its attention projections; returns (clone, layers). The branches are hooked onto the UNet by the
    training loop (:func:`lora_branches`). Call outside inference mode (the factors must be ordinary
    tensors)."""
    mp = model.clone()
    modules = attention_projections(mp)
    keys = lora_keys(mp, modules)
    dm = mp.get_model_object("diffusion_model")
    layers = []
    for m in modules:
        w = dm.get_submodule(m).weight
        up, down = core.init_lora_factors(generator, w.shape[0], w.shape[1], settings.rank)
        layers.append(LoraLayer(m, keys[m], LoraBranch(up, down)))
    return mp, layers


def release_base_gradients(model) -> int:
    """Drop any gradient that reached the shared UNet weights (none should: the loop takes gradients of
    the LoRA factors only, with the weights frozen) and warn, so a layer that bypasses ComfyUI's weight functions cannot leave a
    full-size gradient in the model; returns how many there were."""
    leaked = [p for p in model.get_model_object("diffusion_model").parameters() if p.grad is not None]
    for p in leaked:
        p.grad = None
    if leaked:
        log.warning("[FastDrag] %s: gradients reached %d UNet weights that should be frozen; released them",
                    NODE, len(leaked))
    return len(leaked)


def compute_dtype(model) -> torch.dtype:
    """The dtype the model's UNet computes in (:func:`nodes.dragdiffusion.unet_compute_dtype`)."""
    return unet_compute_dtype(model.model)


# -- the loop ----------------------------------------------------------------------------------------------


@dataclass
class TrainingLog:
    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    skipped_steps: int = 0  # fp16 steps the gradient scaler skipped (inf/NaN gradients)


class IdentityLoraSampler(comfy_adapter.base_class("Sampler")):
    """The official training loop as a ComfyUI sampler (what the guider calls ``sample`` on).

    ``latent`` is the clean latent in VAE space [1, C, h, w]; every step draws crops, eps and t from
    the CPU data ``generator`` (core.draw_step), forms x = x_0 + sigma_t eps (sigma_t = model_sampling.sigmas[t],
    x_0 in model space), asks the guider for D(x, sigma_t) and takes one AdamW step on
    core.noise_prediction_loss (= the official MSE of eps_hat or v_hat), by the pack's precision rule
    (:class:`fastdrag_core.grad_step.GradientStep`: loss scaling when the UNet computes in float16, on
    any device, as the official fp16 run; a step skipped on inf / NaN gradients). The UNet's weights
    are frozen stand-ins on their own memory for the loop (:func:`frozen_parameters`) and the LoRA
    branches are hooked onto the projections (:func:`lora_branches`)."""

    def __init__(self, latent: torch.Tensor, layers: list[LoraLayer], settings: core.LoraTrainSettings,
                 prediction: str, generator: torch.Generator, dtype: torch.dtype,
                 on_step: Optional[Callable[[int, float], None]] = None):
        self.latent, self.layers, self.settings = latent, layers, settings
        self.prediction, self.generator, self.dtype, self.on_step = prediction, generator, dtype, on_step
        self.log = TrainingLog()

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        s = self.settings
        inner = comfy_adapter.guider_base_model(model_wrap, NODE)
        ms = inner.model_sampling
        device = noise.device
        comfy_adapter.copy_guider_conds(model_wrap, NODE)  # normal-tensor copies of the conds
        table = ms.sigmas.detach().to("cpu", torch.float32).clone()
        sigma_data = float(getattr(ms, "sigma_data", 1.0))
        x0_full = inner.process_latent_in(self.latent.to(device, torch.float32).clone())
        params = [p for layer in self.layers for p in layer.factors()]
        step_rule = GradientStep(torch.optim.AdamW(params, lr=s.learning_rate, betas=core.ADAMW_BETAS,
                                                   weight_decay=core.ADAMW_WEIGHT_DECAY, eps=core.ADAMW_EPS),
                                 params, self.dtype, device.type)
        pbar = comfy.utils.ProgressBar(s.steps)
        _, channels, h, w = x0_full.shape
        with torch.enable_grad(), frozen_parameters(inner.diffusion_model), \
                lora_branches(inner.diffusion_model, self.layers):
            for step in range(s.steps):
                comfy.model_management.throw_exception_if_processing_interrupted()
                t0 = time.perf_counter()
                d = core.draw_step(self.generator, channels, h, w, s.batch_size, num_timesteps=table.shape[0])
                x0 = core.crop_batch(x0_full, d.origins, d.size)
                sigma = table[d.timesteps].to(device)
                x = ms.noise_scaling(sigma, d.noise.to(device), x0)
                denoised = model_wrap(x, sigma, **extra_args)
                loss = core.noise_prediction_loss(denoised, x0, sigma, self.prediction, sigma_data)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{NODE}: the loss became {loss.item()} at step {step + 1}; lower "
                                             f"learning_rate (now {s.learning_rate})")
                if not step_rule(loss):
                    self.log.skipped_steps += 1
                del denoised
                value = float(loss.detach())
                del loss
                self.log.losses.append(value)
                self.log.step_seconds.append(time.perf_counter() - t0)
                if self.on_step is not None:
                    self.on_step(step, value)
                pbar.update(1)  # the server's hook also stops here on Cancel
        return latent_image


@dataclass
class TrainedLora:
    """What one run produced: the file tensors (CPU float32, kohya keys) and its log."""

    state_dict: dict[str, torch.Tensor]
    layers: int
    log: TrainingLog


def train_identity_lora(model, positive, samples: torch.Tensor, settings: core.LoraTrainSettings,
                        on_step: Optional[Callable[[int, float], None]] = None) -> TrainedLora:
    """Fine-tune the LoRA on ``samples`` ([1, C, h, w], VAE space) with ``settings.steps >= 1``.

    Behind LCM sampling (``ModelSamplingDiscrete(lcm)``) it trains the plain eps model on the full
    1000-step table (the pack's model rule, :func:`nodes.model_support.supported_model`), as the official
    training's DDPM scheduler does, not LCM's 50-entry table and boundary condition."""
    rule = lora_model_rule(model)
    model = rule.apply(model)
    ms = rule.model_sampling
    prediction = "v" if rule.support.prediction == "v_prediction" else "eps"
    init_generator = torch.Generator(device="cpu").manual_seed(core.init_seed(settings.seed))
    data_generator = torch.Generator(device="cpu").manual_seed(settings.seed)
    dtype = compute_dtype(model)
    with torch.inference_mode(False):
        mp, layers = install_lora(model, settings, init_generator)
        sampler = IdentityLoraSampler(samples.detach().cpu().float().clone(), layers, settings, prediction,
                                      data_generator, dtype, on_step)
        _, c, h, w = samples.shape
        size = core.crop_side(h, w)
        shape = (settings.batch_size, c, size, size)
        # everything else off the device first: training needs far more memory than inference
        comfy.model_management.load_models_gpu([mp], memory_required=1e20, force_full_load=True)
        guider = comfy_adapter.get("TrainGuider")(mp)
        guider.set_conds(positive)
        table = ms.sigmas.detach().to("cpu", torch.float32).clone()
        sigmas = torch.cat([table.flip(0), table.new_zeros(1)])  # every training timestep, for patches that look
        try:
            guider.sample(torch.zeros(shape), torch.zeros(shape), sampler, sigmas, seed=settings.seed)
        finally:
            for layer in layers:
                layer.branch.requires_grad_(False)
            release_base_gradients(mp)
        state = {}
        for layer in layers:
            up, down = layer.factors()
            state.update(core.lora_file_entries(layer.key, up.detach().to("cpu", torch.float32).clone(),
                                                down.detach().to("cpu", torch.float32).clone()))
    return TrainedLora(state, len(state) // 3, sampler.log)


def check_overwrite(path: str, overwrite: bool, node: str = NODE) -> None:
    """Refuse an existing file unless ``overwrite`` is on, and even then one that this node did not
    write (its safetensors metadata says who did: a guard against replacing a downloaded LoRA by
    accident, not a proof)."""
    from safetensors import safe_open

    if not os.path.lexists(path):
        return
    rel = os.path.relpath(path, os.path.realpath(folder_paths.get_folder_paths("loras")[0])).replace(os.sep, "/")
    try:
        with safe_open(path, framework="pt") as f:
            owner = (f.metadata() or {}).get(FILE_TAG)
    except Exception:  # not a safetensors file at all
        owner = None
    if owner != NODE:
        raise ValueError(f"{node}: loras/{rel} already exists and was not written by {NODE}; choose another "
                         "save_name (other files are never overwritten)")
    if not overwrite:
        raise ValueError(f"{node}: loras/{rel} already exists (an earlier {NODE} run wrote it); turn on overwrite "
                         "to replace it, or choose another save_name")


def save_lora_file(path: str, trained: TrainedLora, settings: core.LoraTrainSettings, latent_shape,
                   node: str = NODE, overwrite: bool = False) -> None:
    """Write the LoRA (float32 safetensors, metadata), atomically; an existing file only when
    ``overwrite`` is on and this node wrote it (see :func:`check_overwrite`)."""
    from safetensors.torch import save_file

    check_overwrite(path, overwrite, node)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    log_ = trained.log
    meta = {
        FILE_TAG: NODE,
        "fastdrag_method": "DragDiffusion identity-preserving LoRA (attention to_q/to_k/to_v/to_out.0)",
        "fastdrag_steps": str(settings.steps),
        "fastdrag_learning_rate": repr(settings.learning_rate),
        "fastdrag_batch_size": str(settings.batch_size),
        "fastdrag_seed": str(settings.seed),
        "fastdrag_latent_shape": "x".join(str(int(d)) for d in latent_shape),
        "fastdrag_losses": json.dumps(log_.losses),  # per step, float32 values as Python floats
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(settings.rank),
        "ss_network_alpha": str(settings.rank),
    }
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        save_file(trained.state_dict, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def summary(trained: TrainedLora, settings: core.LoraTrainSettings, seconds: float) -> str:
    losses = trained.log.losses
    k = max(1, min(10, len(losses) // 4))
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    msg = (f"rank-{settings.rank} LoRA on {trained.layers} attention projections, {settings.steps} steps x batch "
           f"{settings.batch_size} in {seconds:.1f} s; loss (mean of {k} steps) {first:.4g} -> {last:.4g}")
    if trained.log.skipped_steps:
        msg += f"; {trained.log.skipped_steps} fp16 steps skipped by the gradient scaler"
    return msg


# -- the node ----------------------------------------------------------------------------------------------


class DragDiffusionLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE,
            display_name="DragDiffusion LoRA (identity)",
            category="FastDrag/dragdiffusion",
            is_output_node=True,  # writes a file with save_name: runs even when its model is not used
            description="DragDiffusion's identity-preserving LoRA: fine-tunes a rank-r LoRA on the UNet's "
                        "attention projections (to_q/to_k/to_v/to_out, self- and cross-attention) to "
                        "reconstruct this image, as the official code (80 steps, AdamW 5e-4, batch 4, rank 16). "
                        "Returns the model with the LoRA applied; optionally saves it for LoraLoaderModelOnly.",
            inputs=[
                io.Model.Input("model", tooltip="The model to fine-tune (SD1.x / SD2.x / SDXL UNet, eps or v "
                                                "prediction). LoRAs already applied stay under the new one."),
                io.Conditioning.Input("positive", tooltip="The prompt describing the image (official: the "
                                                          "user's prompt; the text encoder stays frozen)."),
                io.Latent.Input("latent", tooltip="The clean latent of the image (VAEEncode), batch 1."),
                io.Int.Input("steps", default=80, min=0, max=10000,
                             tooltip="Training steps (official 80). 0 = no LoRA: the model passes through "
                                     "unchanged."),
                io.Float.Input("learning_rate", default=5e-4, min=1e-7, max=1.0, step=1e-7,
                               tooltip="AdamW learning rate, constant (official 5e-4; betas 0.9/0.999, weight "
                                       "decay 0.01)."),
                io.Int.Input("rank", default=16, min=1, max=256,
                             tooltip="LoRA rank r of every projection (official 16); saved with alpha = r, so "
                                     "the update is exactly B A."),
                io.Int.Input("batch_size", default=4, min=1, max=64,
                             tooltip="Crops per step (official 4): squares of the latent's short side at "
                                     "random offsets, each with its own noise and timestep."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Seed of the LoRA init, crops, noise and timesteps (official 0). Same "
                                     "seed and inputs give the same LoRA on the CPU."),
                io.String.Input("save_name", default="", optional=True,
                                tooltip="Empty = don't save. Otherwise the file name (\".safetensors\" added) "
                                        "written into ComfyUI's loras folder, loadable with LoraLoaderModelOnly "
                                        "at strength 1. An existing file is replaced only with overwrite on."),
                io.Boolean.Input("overwrite", default=False, optional=True,
                                 tooltip="Replace an existing save_name file that this node wrote earlier. Off: "
                                         "an existing file stops the node before training. Files this node did "
                                         "not write are never replaced."),
            ],
            outputs=[
                io.Model.Output("model", display_name="model",
                                tooltip="The input model with the trained LoRA applied (strength 1)."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, latent, steps, learning_rate, rank, batch_size, seed,
                save_name="", overwrite=False) -> io.NodeOutput:
        try:
            settings = core.LoraTrainSettings(steps=int(steps), learning_rate=float(learning_rate), rank=int(rank),
                                              batch_size=int(batch_size), seed=int(seed))
        except ValueError as e:
            raise ValueError(f"{NODE}: {e}") from None
        save_name = (save_name or "").strip()
        lora_model_rule(model)  # before any other check: the model decides what the latent may be
        samples = check_clean_latent(latent, model)
        if not positive:
            raise ValueError(f"{NODE}: positive conditioning is empty; connect a CLIPTextEncode of the prompt")
        path, rel = lora_file_path(save_name) if save_name else (None, None)
        if path is not None:
            check_overwrite(path, bool(overwrite))
        if settings.steps == 0:
            if path is not None:
                raise ValueError(f"{NODE}: steps is 0 (no LoRA) but save_name is {_shown(save_name)}: there is "
                                 "nothing to save; set steps > 0 or clear save_name")
            return io.NodeOutput(model, ui=ui.PreviewText("steps = 0: no LoRA, model passed through"))
        t0 = time.perf_counter()
        trained = train_identity_lora(model, positive, samples, settings)
        seconds = time.perf_counter() - t0
        msg = summary(trained, settings, seconds)
        if path is not None:
            save_lora_file(path, trained, settings, samples.shape, overwrite=bool(overwrite))
            msg += f"; saved to {rel} (loras)"
        log.info("[FastDrag] %s: %s", NODE, msg)
        out, _ = comfy.sd.load_lora_for_models(model, None, trained.state_dict, 1.0, 0)
        return io.NodeOutput(out, ui=ui.PreviewText(msg))
