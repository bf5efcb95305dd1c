"""Peak device memory of the server process, for benchmarks/device_check.py (test pack only: nothing
measuring on the product path). ``reset`` starts a measurement, a later call with ``reset`` off reads the
peak allocated since; ``nonce`` makes every call a new prompt input (ComfyUI would cache it otherwise)."""

import json

import torch

import comfy.model_management


class FastDragTestDevicePeak:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"reset": ("BOOLEAN", {"default": True}),
                             "nonce": ("INT", {"default": 0, "min": 0, "max": 2 ** 62})}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "FastDragTest"

    def run(self, reset, nonce):
        dev = comfy.model_management.get_torch_device()
        info = {"device": str(dev), "peak_bytes": None, "allocated_bytes": None, "total_bytes": None}
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            info.update(peak_bytes=torch.cuda.max_memory_allocated(dev), allocated_bytes=torch.cuda.memory_allocated(dev),
                        total_bytes=torch.cuda.get_device_properties(dev).total_memory,
                        name=torch.cuda.get_device_name(dev))
            if reset:
                torch.cuda.reset_peak_memory_stats(dev)
        return {"ui": {"text": [json.dumps(info)]}}


NODES = {"FastDragTestDevicePeak": FastDragTestDevicePeak}
