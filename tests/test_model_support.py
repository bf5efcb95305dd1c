"""fastdrag_core.model_support.decide: which model families FastDrag accepts.

The descriptions are what ``nodes/model_support.describe_model`` reads from ComfyUI models; the MROs
are those of ComfyUI v0.8.0's model sampling classes (``comfy/model_base.py model_sampling`` combines a
table class and a prediction mixin; ``comfy_extras/nodes_model_advanced.py`` does the same for the
ModelSampling* nodes). Families ComfyUI cannot build cheaply (video, 16-channel, DiT) are only here;
the others are also refused in the real server (tests/integration/test_model_families.py).
"""

import pytest

from fastdrag_core.model_support import LCM_NOTE, ModelDescription, Support, decide

EPS = ("ModelSampling", "ModelSamplingDiscrete", "Module", "EPS", "object")
VPRED = ("ModelSampling", "ModelSamplingDiscrete", "Module", "V_PREDICTION", "EPS", "object")
LCM = ("ModelSamplingAdvanced", "ModelSamplingDiscreteDistilled", "ModelSamplingDiscrete", "Module", "LCM", "EPS",
       "object")
EDM = ("ModelSampling", "ModelSamplingContinuousEDM", "Module", "EDM", "V_PREDICTION", "EPS", "object")
VCONT = ("ModelSampling", "ModelSamplingContinuousV", "ModelSamplingContinuousEDM", "Module", "V_PREDICTION", "EPS",
         "object")
FLOW = ("ModelSampling", "ModelSamplingDiscreteFlow", "Module", "CONST", "object")
FLUX = ("ModelSampling", "ModelSamplingFlux", "Module", "CONST", "object")
CASCADE = ("ModelSampling", "StableCascadeSampling", "ModelSamplingDiscrete", "Module", "EPS", "object")
X0 = ("ModelSamplingAdvanced", "ModelSamplingDiscrete", "Module", "X0", "EPS", "object")
IMG2IMG = ("ModelSamplingAdvanced", "ModelSamplingDiscrete", "Module", "IMG_TO_IMG", "X0", "EPS", "object")


def desc(family="SD15", sampling=EPS, latent="SD15", channels=4, dims=2, attn1=9, denoiser="UNetModel",
         patched=False):
    return ModelDescription(family=family, sampling=sampling, latent_format=latent, latent_channels=channels,
                            latent_dimensions=dims, decoder_attn1=attn1, denoiser=denoiser, sampling_patched=patched)


@pytest.mark.parametrize("d,family,prediction", [
    (desc(), "SD15", "eps"),
    (desc("SD20", VPRED, attn1=9), "SD20", "v_prediction"),
    (desc("SD20", EPS), "SD20", "eps"),
    (desc("SDXL", EPS, "SDXL", attn1=36), "SDXL", "eps"),
    (desc("SDXL", VPRED, "SDXL", attn1=36, patched=True), "SDXL", "v_prediction"),  # v-pred fine-tune via node
    (desc("SSD1B", EPS, "SDXL", attn1=24), "SSD1B", "eps"),
    (desc("SD15", VPRED, patched=True), "SD15", "v_prediction"),
])
def test_supported_families(d, family, prediction):
    assert decide(d, "N") == Support(family=family, prediction=prediction, lcm=False)


@pytest.mark.parametrize("d,family", [
    (desc("Flux", FLUX, "Flux", channels=16, attn1=0, denoiser="Flux"), "Flux"),
    (desc("Flux", FLUX, "Flux", channels=16, attn1=0, denoiser="Flux", patched=True), "Flux"),  # ModelSamplingFlux
    (desc("FluxSchnell", FLUX, "Flux", channels=16, attn1=0, denoiser="Flux"), "FluxSchnell"),
    (desc("SD3", FLOW, "SD3", channels=16, attn1=0, denoiser="OpenAISignatureMMDITWrapper"), "SD3"),
    (desc("SD3", FLOW, "SD3", channels=16, attn1=0, denoiser="MMDiT", patched=True), "SD3"),  # ModelSamplingSD3
])
def test_flux1_and_sd3_are_accepted_as_flow(d, family):
    s = decide(d, "N")
    assert s == Support(family=family, prediction="flow") and s.flow
    for method, needle in (("DragDiffusion", "DragDiffusion supports SD1.x and SD2.x"),
                           ("DIFT", "DIFT supports SD1.x, SD2.x (eps and v-prediction) and SDXL-family (eps and "
                                    "v-prediction) checkpoints:")):
        with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
            decide(d, "N", method=method)


def test_lcm_is_accepted_as_plain_eps():
    s = decide(desc(sampling=LCM, patched=True), "N")
    assert s == Support(family="SD15", prediction="eps", lcm=True)
    assert "(LCM sampling replaced)" in s.describe()
    assert LCM_NOTE == ("LCM sampling detected: FastDrag runs the UNet as a plain eps model on the 1000-step "
                        "DDIM schedule, as the official code")


@pytest.mark.parametrize("d,needles", [
    (desc("SDXL", EDM, "SDXL_Playground_2_5", attn1=36), ["this SDXL model", "continuous-time EDM",
                                                           "Playground 2.5", "use one of those checkpoints"]),
    (desc("SDXL", VCONT, "SDXL", attn1=36), ["continuous-time EDM", "ModelSamplingContinuousV"]),
    (desc("SVD_img2vid", EDM, "SD15", attn1=30), ["this Stable Video Diffusion model", "continuous-time EDM"]),
    (desc("Flux2", FLUX, "Flux2", channels=128, attn1=0, denoiser="Flux"), ["this Flux.2 model", "128-channel"]),
    (desc("FluxInpaint", FLUX, "Flux", channels=16, attn1=0, denoiser="Flux"), ["this Flux Fill (inpainting) model",
                                                                                 "16-channel"]),
    (desc("Chroma", FLUX, "Flux", channels=16, attn1=0, denoiser="Chroma"), ["this Chroma model"]),
    (desc("QwenImage", FLOW, "Wan21", channels=16, attn1=0, denoiser="QwenImageTransformer2DModel"),
     ["this Qwen-Image model"]),
    (desc("HiDream", FLOW, "Flux", channels=16, attn1=0, denoiser="HiDreamImageTransformer2DModel"),
     ["this HiDream model"]),
    (desc("Lumina2", FLOW, "Flux", channels=16, attn1=0, denoiser="NextDiT"), ["this Lumina 2 model"]),
    (desc("AuraFlow", FLOW, "SDXL", attn1=0, denoiser="MMDiT"), ["this AuraFlow model", "flow-matching sampling"]),
    (desc("Flux", EPS, "Flux", channels=16, attn1=0, denoiser="Flux", patched=True),
     ["this Flux model uses ModelSamplingDiscrete+EPS sampling", "ModelSamplingFlux with CONST prediction",
      "remove the model sampling node"]),
    (desc("SD3", FLOW, "SD15", channels=4, attn1=0, denoiser="MMDiT"), ["4-channel SD15 latents"]),
    (desc("SD3", FLOW, "SD3", channels=16, attn1=0, denoiser="UNetModel"), ["has the denoiser UNetModel"]),
    (desc("SD15", FLOW, patched=True), ["flow-matching sampling", "ModelSamplingDiscreteFlow+CONST",
                                        "remove the model sampling node"]),
    (desc("WAN21_T2V", FLOW, "Wan21", channels=16, dims=3, attn1=0, denoiser="WanModel"),
     ["is a video model", "3-D latents of format Wan21", "use an image checkpoint"]),
    (desc("StableAudio", FLOW, "StableAudio1", channels=64, dims=1, attn1=0), ["audio or 3-D model"]),
    (desc("Stable_Cascade_B", CASCADE, "SC_B", attn1=20), ["Stable Cascade sampling"]),
    (desc("SD15", X0, patched=True), ["predicts x0 directly", "ModelSamplingDiscrete(x0)"]),
    (desc("SD15", IMG2IMG, patched=True), ["img_to_img sampling"]),
    (desc("SD_X4Upscaler", VPRED, "SD_X4", attn1=9), ["uses SD_X4 latents"]),
    (desc("PixArtAlpha", EPS, "SD15", attn1=0, denoiser="PixArtMS"), ["this PixArt-alpha model",
                                                                      "no self-attention layers in a UNet decoder",
                                                                      "denoiser PixArtMS"]),
    (desc("Mystery", ("ModelSampling", "SomethingNew", "Module", "object")), ["unknown model sampling"]),
])
def test_refused_families_are_named(d, needles):
    with pytest.raises(ValueError) as e:
        decide(d, "FastDragInvert")
    msg = str(e.value)
    assert msg.startswith("FastDragInvert: this "), msg
    assert "FastDrag supports SD1.x, SD2.x (eps and v-prediction) and SDXL-family" in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)


# -- the DragDiffusion nodes: the same rule without the SDXL family -------------------------------

@pytest.mark.parametrize("d,family,prediction,lcm", [
    (desc(), "SD15", "eps", False),
    (desc("SD20", VPRED), "SD20", "v_prediction", False),
    (desc(sampling=LCM, patched=True), "SD15", "eps", True),  # LCM: plain eps on the full table, as FastDrag
])
def test_dragdiffusion_accepts_sd1_and_sd2(d, family, prediction, lcm):
    assert decide(d, "N", method="DragDiffusion") == Support(family=family, prediction=prediction, lcm=lcm)


@pytest.mark.parametrize("d,needles", [
    (desc("SDXL", EPS, "SDXL", attn1=36), ["this SDXL model is an SDXL-family UNet", "up_blocks[2]",
                                           "transformer blocks 10-15 of 16", "or FastDrag (FastDragEdit) on this one"]),
    (desc("SSD1B", VPRED, "SDXL", attn1=24, patched=True), ["SSD-1B (SDXL family) model is an SDXL-family UNet"]),
    (desc("SDXL", EDM, "SDXL_Playground_2_5", attn1=36), ["continuous-time EDM"]),  # the family rule comes first
    (desc("SD15", FLOW, patched=True), ["flow-matching sampling", "remove the model sampling node"]),
])
def test_dragdiffusion_refusals_name_the_method(d, needles):
    with pytest.raises(ValueError) as e:
        decide(d, "DragDiffusionDrag", method="DragDiffusion")
    msg = str(e.value)
    assert msg.startswith("DragDiffusionDrag: this "), msg
    assert "DragDiffusion supports SD1.x and SD2.x (eps and v-prediction) checkpoints" in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    assert decide(desc(), "N", method="FastDrag").family == "SD15"
    with pytest.raises(ValueError, match="unknown method"):
        decide(desc(), "N", method="Other")
