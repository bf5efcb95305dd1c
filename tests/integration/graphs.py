"""API-format prompt builders for the integration tests and the benchmark."""

from __future__ import annotations

import json

IMAGE = "fastdrag_test.png"  # 128x128 pattern written into the server's input folder


def points_json(drags, width=128, height=128) -> str:
    return json.dumps({"version": 1, "width": width, "height": height,
                       "drags": [{"handle": list(h), "target": list(t)} for h, t in drags]})


def base(ckpt: str, prompt_text: str = "a photo of a yellow square and a blue disc") -> dict:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt_text, "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "img": {"class_type": "LoadImage", "inputs": {"image": IMAGE}},
        "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["ckpt", 2]}},
    }


def points_node(points: str, image=("img", 0), mask=None) -> dict:
    inputs = {"image": list(image), "points": points}
    if mask is not None:
        inputs["mask"] = list(mask)
    return {"class_type": "FastDragPoints", "inputs": inputs}


def invert_node(model=("ckpt", 0), latent=("enc", 0), steps=10, strength=0.7, cfg=1.0, negative=None,
                positive=("pos", 0)) -> dict:
    inputs = {"model": list(model), "positive": list(positive), "latent": list(latent), "steps": steps,
              "strength": strength, "cfg": cfg}
    if negative is not None:
        inputs["negative"] = list(negative)
    return {"class_type": "FastDragInvert", "inputs": inputs}


def sample_node(latent, kv, model=("ckpt", 0), cfg=1.0, consistency=True, negative=None, positive=("pos", 0)) -> dict:
    inputs = {"model": list(model), "positive": list(positive), "latent": list(latent), "kv": list(kv),
              "cfg": cfg, "consistency": consistency}
    if negative is not None:
        inputs["negative"] = list(negative)
    return {"class_type": "FastDragSample", "inputs": inputs}


def warp_fill_sample_nodes(inv="inv", drag=("pts", 0), model=("ckpt", 0), positive=("pos", 0)) -> dict:
    """FastDragWarp -> FastDragBNNI -> FastDragSample on the latent and K/V of the FastDragInvert node
    ``inv`` (node ids ``warp``, ``bnni``, ``samp``; default settings, cfg 1)."""
    return {
        "warp": {"class_type": "FastDragWarp", "inputs": {"latent": [inv, 0], "drag": list(drag),
                                                          "handle_on_cell": "paper"}},
        "bnni": {"class_type": "FastDragBNNI", "inputs": {"latent": ["warp", 0], "null_mask": ["warp", 1],
                                                          "fill": "bnni"}},
        "samp": sample_node(("bnni", 0), (inv, 1), model=model, positive=positive),
    }


def edit_node(drag=("pts", 0), model=("ckpt", 0), positive=("pos", 0), image=("img", 0), steps=10, strength=0.7,
              cfg=1.0, negative=None, **extra) -> dict:
    inputs = {"model": list(model), "vae": ["ckpt", 2], "positive": list(positive), "image": list(image),
              "drag": list(drag), "steps": steps, "strength": strength, "cfg": cfg, **extra}
    if negative is not None:
        inputs["negative"] = list(negative)
    return {"class_type": "FastDragEdit", "inputs": inputs}


def save_node(path: str, **tensors) -> dict:
    return {"class_type": "FastDragTestSave", "inputs": {"path": path, **{k: list(v) for k, v in tensors.items()}}}
