"""ComfyUI internals behind one seam: every name the pack uses beyond ComfyUI's extension surface.

The extension surface the node modules use directly: the V3 node API (``comfy_api.latest``), node
expansion (``comfy_execution.graph_utils.GraphBuilder``), ModelPatcher's patch points (clone, object /
attn1 / output-block patches, weight wrappers, ``get_model_object``), the custom-sampler interface
(``comfy.samplers.KSAMPLER``, ``comfy.sample.sample_custom``), ``comfy.model_management``,
``comfy.utils.ProgressBar``, ``comfy.sd.load_lora_for_models``, ``folder_paths`` and
``server.PromptServer``. Everything else (another node pack's module, layer classes, private attributes
of ComfyUI's sampler objects) is reached through this module, each with the ComfyUI versions it was
checked against.

At load, :data:`INTERNALS` is resolved once; :func:`available_nodes` drops only the nodes that need a
missing one and says so in one log line, so a ComfyUI that renamed one internal keeps the rest of the
pack. Attribute reaches on runtime objects (:func:`sampler_base_model`, :func:`guider_base_model`,
:func:`copy_guider_conds`) cannot be checked at load: they raise an error naming the node, the
attribute and the checked version instead of an AttributeError deep in a sampler.

This module imports nothing from ComfyUI at import time except through :func:`resolve` (a unit test
loads it on its own, without ComfyUI).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

V080 = "ComfyUI v0.8.0 (fc0cb10)"

# who needs what (node ids = the keys of nodes/__init__.py NODE_CLASS_MAPPINGS)
LORA_NODES = ("DragDiffusionLoRA", "DragDiffusionEdit")  # the Edit expands into the LoRA node
ATTN1_NODES = ("FastDragInvert", "FastDragSample", "FastDragEdit", "DragDiffusionSample", "DragDiffusionEdit")
MODEL_NODES = ("FastDragInvert", "FastDragSample", "FastDragEdit", "DragDiffusionLoRA", "DragDiffusionDrag",
               "DragDiffusionSample", "DragDiffusionEdit", "DragMeanDistance")  # the pack's model rule
SCHEDULE_NODES = ("FastDragInvert", "FastDragEdit", "DragDiffusionEdit")  # the inversion's schedule


@dataclass(frozen=True)
class Internal:
    """One ComfyUI internal: ``attr`` (dotted) of module ``module``, needed by ``nodes``, checked against
    ``checked``."""

    module: str
    attr: str
    nodes: tuple[str, ...]
    checked: str = V080

    @property
    def name(self) -> str:
        return f"{self.module}.{self.attr}"


INTERNALS: dict[str, Internal] = {
    # ComfyUI's LoRA trainer (comfy_extras/nodes_train.py): its guider (full load, cfg 1) and the cond
    # copier it runs before training; the identity LoRA trains through both. Checked: v0.8.0 (fc0cb10).
    "TrainGuider": Internal("comfy_extras.nodes_train", "TrainGuider", LORA_NODES),
    "process_cond_list": Internal("comfy_extras.nodes_train", "process_cond_list", LORA_NODES),
    # the sampler base class TrainGuider runs (comfy/samplers.py). Checked: v0.8.0 (fc0cb10).
    "Sampler": Internal("comfy.samplers", "Sampler", LORA_NODES),
    # ComfyUI's LoRA key map and diffusers names, to write kohya keys (comfy/lora.py, comfy/utils.py).
    # Checked: v0.8.0 (fc0cb10).
    "model_lora_keys_unet": Internal("comfy.lora", "model_lora_keys_unet", LORA_NODES),
    "unet_to_diffusers": Internal("comfy.utils", "unet_to_diffusers", LORA_NODES),
    # the UNet's attention layer classes (comfy/ldm/modules/attention.py): which modules are attention
    # (LoRA targets), which blocks hold attn1 sites. Checked: v0.8.0 (fc0cb10).
    "CrossAttention": Internal("comfy.ldm.modules.attention", "CrossAttention", LORA_NODES),
    "SpatialTransformer": Internal("comfy.ldm.modules.attention", "SpatialTransformer", MODEL_NODES),
    # the attention function an attn1 replace patch calls when nothing is chained; looked up at call time
    # (other packs and launch flags replace it). Checked: v0.8.0 (fc0cb10).
    "optimized_attention": Internal("comfy.ldm.modules.attention", "optimized_attention", ATTN1_NODES),
    # the wrapper type the pass counter of the attn1 patches uses (comfy/patcher_extension.py).
    # Checked: v0.8.0 (fc0cb10).
    "CALC_COND_BATCH": Internal("comfy.patcher_extension", "WrappersMP.CALC_COND_BATCH", ATTN1_NODES),
    # the plain discrete eps sampling that replaces LCM's (comfy/model_sampling.py). Checked: v0.8.0 (fc0cb10).
    "ModelSamplingDiscrete": Internal("comfy.model_sampling", "ModelSamplingDiscrete", MODEL_NODES),
    "EPS": Internal("comfy.model_sampling", "EPS", MODEL_NODES),
    # ddim_uniform sigmas of the inversion schedule (comfy/samplers.py). Checked: v0.8.0 (fc0cb10).
    "calculate_sigmas": Internal("comfy.samplers", "calculate_sigmas", SCHEDULE_NODES),
    # empty-latent channel fix KSampler applies (comfy/sample.py). Checked: v0.8.0 (fc0cb10).
    "fix_empty_latent_channels": Internal("comfy.sample", "fix_empty_latent_channels", SCHEDULE_NODES),
}


def resolve(table: dict[str, Internal], importer=importlib.import_module) -> tuple[dict, dict[str, str]]:
    """({key: module} for every internal found, {key: why not} for every missing one)."""
    found, missing = {}, {}
    for key, it in table.items():
        try:
            module = importer(it.module)
            _lookup(module, it.attr)
            found[key] = module
        except Exception as e:  # noqa: BLE001  (ImportError, AttributeError, or the module failing to import)
            missing[key] = f"{type(e).__name__}: {e}"
    return found, missing


def _lookup(module, attr: str):
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


_MODULES, MISSING = resolve(INTERNALS)


class MissingInternal(RuntimeError):
    pass


def get(key: str):
    """The internal ``key``, looked up in its module now (so a later replacement, e.g. of
    ``optimized_attention``, is honoured); MissingInternal if this ComfyUI lacks it."""
    it = INTERNALS[key]
    module = _MODULES.get(key)
    if module is None:
        raise MissingInternal(f"[FastDrag] this ComfyUI has no {it.name} ({MISSING.get(key, 'not found')}); the "
                              f"pack was checked against {it.checked}. Update ComfyUI or the pack.")
    return _lookup(module, it.attr)


def base_class(key: str) -> type:
    """The class ``key`` to subclass at import time, or, if missing, a placeholder class of its own (the
    nodes that need it are not registered, see :func:`available_nodes`)."""
    try:
        return get(key)
    except MissingInternal:
        return type(f"Missing{key}", (), {})


def disabled_nodes(missing: dict[str, str], table: dict[str, Internal] = INTERNALS) -> dict[str, list[str]]:
    """{node id: [names of the missing internals it needs]}."""
    out: dict[str, list[str]] = {}
    for key in missing:
        for node in table[key].nodes:
            out.setdefault(node, []).append(table[key].name)
    return out


def available_nodes(node_list, missing: dict[str, str] | None = None, table: dict[str, Internal] = INTERNALS):
    """``node_list`` without the nodes that need a missing internal, logging one line when any is dropped."""
    missing = MISSING if missing is None else missing
    off = disabled_nodes(missing, table)
    kept = [n for n in node_list if n.__name__ not in off]
    dropped = [n.__name__ for n in node_list if n.__name__ in off]
    if dropped:
        names = sorted({table[k].name for k in missing})
        checked = sorted({table[k].checked for k in missing})
        log.error("[FastDrag] this ComfyUI lacks %s (the pack was checked against %s): nodes %s are disabled, the "
                  "other %d load normally; update ComfyUI (or the pack) and restart", ", ".join(names),
                  ", ".join(checked), ", ".join(dropped), len(kept))
    return kept


# -- attribute reaches on runtime objects ------------------------------------------------------------------

def _reach(obj, path: str, what: str, node: str):
    try:
        return _lookup(obj, path)
    except AttributeError:
        raise MissingInternal(f"{node}: ComfyUI's {what} has no .{path} (checked against {V080}); this ComfyUI "
                              "changed its sampler internals: update the pack") from None


def sampler_base_model(model, node: str):
    """The BaseModel under the model a k-diffusion sampler function receives
    (KSamplerX0Inpaint.inner_model = CFGGuider, CFGGuider.inner_model = BaseModel). Checked: v0.8.0 (fc0cb10)."""
    return _reach(model, "inner_model.inner_model", "sampler model (KSamplerX0Inpaint -> CFGGuider)", node)


def guider_base_model(guider, node: str):
    """The BaseModel of a guider inside its ``sample`` (CFGGuider.inner_model, set by outer_sample).
    Checked: v0.8.0 (fc0cb10)."""
    return _reach(guider, "inner_model", "guider (CFGGuider)", node)


def copy_guider_conds(guider, node: str) -> None:
    """Replace the guider's prepared conds (CFGGuider.conds) with ordinary-tensor copies, as ComfyUI's
    LoRA trainer does (``process_cond_list``) so that autograd can save them. Checked: v0.8.0 (fc0cb10)."""
    guider.conds = get("process_cond_list")(_reach(guider, "conds", "guider (CFGGuider)", node))
