"""The pack loaded in ComfyUI's python (v0.8.0) with one internal it uses deleted first: it still imports,
and only the nodes that need that internal are left out (nodes/comfy_adapter.py). No server: a
subprocess imports the pack and asks its extension for the node list."""

import os
import subprocess

from comfy_server import REPO as ROOT
from comfy_server import comfy_python, find_comfyui, skip_or_fail

LOAD_SCRIPT = r"""
import asyncio, importlib.util, logging, os, sys
root, pack = sys.argv[1], sys.argv[2]
sys.path.insert(0, root)
os.chdir(root)
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import comfy.cli_args
import comfy_extras.nodes_train
del comfy_extras.nodes_train.TrainGuider  # a ComfyUI that renamed it
logging.basicConfig(level=logging.INFO, format="LOG %(levelname)s %(message)s", stream=sys.stdout, force=True)
spec = importlib.util.spec_from_file_location("fastdrag_pack", os.path.join(pack, "__init__.py"),
                                              submodule_search_locations=[pack])
m = importlib.util.module_from_spec(spec)
sys.modules["fastdrag_pack"] = m
spec.loader.exec_module(m)
from fastdrag_pack.nodes import NODE_CLASS_MAPPINGS, FastDragExtension, comfy_adapter
print("MISSING", sorted(comfy_adapter.MISSING))
print("ALL", ",".join(NODE_CLASS_MAPPINGS))
print("NODES", ",".join(n.__name__ for n in asyncio.run(FastDragExtension().get_node_list())))
"""


def test_the_pack_loads_in_comfyui_without_one_internal():
    """ComfyUI v0.8.0 with ``comfy_extras.nodes_train.TrainGuider`` deleted before the pack is imported: the
    pack imports, every other internal resolves, the two nodes that train the LoRA are left out with one
    log line, every other node of the pack is registered."""
    root, reason = find_comfyui()
    if root is None:
        skip_or_fail(reason)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([comfy_python(root), "-c", LOAD_SCRIPT, root, ROOT], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert "MISSING ['TrainGuider']" in lines, out.stdout[-2000:]
    nodes = next(line for line in lines if line.startswith("NODES ")).split(" ", 1)[1].split(",")
    every = next(line for line in lines if line.startswith("ALL ")).split(" ", 1)[1].split(",")
    assert len(every) >= 14 and sorted(nodes) == sorted(set(every) - {"DragDiffusionLoRA", "DragDiffusionEdit"}), nodes
    assert {"FastDragInvert", "FastDragEdit", "DragDiffusionDrag", "DragDiffusionSample"} <= set(nodes)
    errors = [line for line in lines if line.startswith("LOG ERROR") and "[FastDrag]" in line]
    assert len(errors) == 1 and "comfy_extras.nodes_train.TrainGuider" in errors[0], out.stdout[-2000:]
