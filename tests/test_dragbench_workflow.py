"""Marked workflows (benchmarks/marked_workflow.py) and the runner's argument handling, no server."""

import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import marked_workflow as mw  # noqa: E402

SHIPPED = {name: os.path.join(REPO, "benchmarks", "workflows", f"{name}.json") for name in ("fastdrag", "dragdiffusion",
                                                                                          "fastdrag_flux", "fastdrag_sd35")}


@pytest.mark.parametrize("name, node, defaults", [
    ("fastdrag", "FastDragEdit", {"steps": 10, "strength": 0.7, "cfg": 1.0}),
    ("fastdrag_flux", "FastDragEdit", {"steps": 10, "strength": 0.7, "cfg": 1.0, "guidance": 3.5,
                                       "dit_kv": "v_last_third"}),
    ("fastdrag_sd35", "FastDragEdit", {"steps": 10, "strength": 0.7, "cfg": 1.0, "dit_kv": "v_last_third"}),
    ("dragdiffusion", "DragDiffusionEdit", {"steps": 50, "strength": 0.7, "drag_steps": 80, "lora_steps": 80,
                                            "cfg": 1.0}),
])
def test_shipped_workflows(name, node, defaults):
    prompt, got_defaults, description = mw.load_workflow(SHIPPED[name])
    assert got_defaults == defaults and description
    assert "_marks" not in prompt and node in mw.class_types(prompt)
    assert mw.placeholders(prompt) == {"image", "mask", "points", "prompt", "checkpoint", "output"} | set(defaults)
    assert prompt[mw.output_node(prompt)]["class_type"] == "SaveImage"
    values = {**defaults, "image": "a/b.png", "mask": "a/m.png", "points": '{"version": 1}', "prompt": "p",
              "checkpoint": "c.safetensors", "output": "out/x"}
    filled = mw.fill(prompt, values)
    assert mw.placeholders(filled) == set()
    edit = next(n for n in filled.values() if n["class_type"] == node)
    assert edit["inputs"]["steps"] == defaults["steps"] and isinstance(edit["inputs"]["strength"], float)
    assert prompt == mw.load_workflow(SHIPPED[name])[0]  # fill does not touch its input


def test_fill_marks_and_errors(tmp_path):
    wf = {"_marks": {"defaults": {"n": 3}},
          "a": {"class_type": "LoadImage", "inputs": {"image": "{{image}}"}},
          "b": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of {{prompt}}, {{n}} times", "clip": ["c", 1]}},
          "c": {"class_type": "SaveImage", "inputs": {"images": ["a", 0], "filename_prefix": "{{output}}"}}}
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(wf))
    prompt, defaults, _ = mw.load_workflow(str(path))
    out = mw.fill(prompt, {**defaults, "image": "x.png", "prompt": "a cat", "output": "o"})
    assert out["b"]["inputs"]["text"] == "a photo of a cat, 3 times" and out["b"]["inputs"]["clip"] == ["c", 1]
    with pytest.raises(mw.WorkflowError, match=r"no value for \{\{prompt\}\}; give it with --set prompt=VALUE"):
        mw.fill(prompt, {"image": "x", "output": "o", "n": 1})
    assert mw.parse_set(["steps=20", "cfg=1.5", "name=some text", "flag=true"]) == \
        {"steps": 20, "cfg": 1.5, "name": "some text", "flag": True}
    with pytest.raises(mw.WorkflowError, match="expected NAME=VALUE"):
        mw.parse_set(["steps"])
    # required marks, format
    del wf["c"]
    path.write_text(json.dumps(wf))
    with pytest.raises(mw.WorkflowError, match=r"no \{\{output\}\} mark"):
        mw.load_workflow(str(path))
    path.write_text(json.dumps({"nodes": [], "links": []}))
    with pytest.raises(mw.WorkflowError, match="not an API-format workflow"):
        mw.load_workflow(str(path))
    two = {"a": {"class_type": "SaveImage", "inputs": {"filename_prefix": "{{output}}"}},
           "b": {"class_type": "SaveImage", "inputs": {"filename_prefix": "{{output}}"}}}
    with pytest.raises(mw.WorkflowError, match="exactly one node"):
        mw.output_node(two)


def load_runner():
    """benchmarks/dragbench.py by path (a plain ``import dragbench`` may find another package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("dragbench_runner", os.path.join(REPO, "benchmarks", "dragbench.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runner_arguments_and_selection(tmp_path):
    runner = load_runner()

    args = runner.parse_args(["--dragbench", "d", "--method", "fastdrag", "--checkpoint", "m.safetensors",
                              "--out", "o", "--limit", "2"])
    assert args.dift_checkpoint == "m.safetensors" and args.ensemble == 8 and args.seed == 42
    with pytest.raises(SystemExit):
        runner.parse_args(["--dragbench", "d", "--checkpoint", "m", "--out", "o"])  # no method
    db = runner.db
    refs = [db.SampleRef(c, n, "") for c, n in (("art_work", "a"), ("animals", "b"), ("animals", "c"))]
    assert [r.key for r in runner.select(refs, args)] == ["art_work/a", "animals/b"]
    args = runner.parse_args(["--dragbench", "d", "--workflow", "w.json", "--checkpoint", "m", "--out", "o",
                              "--samples", "animals", "art_work/a"])
    assert [r.key for r in runner.select(refs, args)] == ["art_work/a", "animals/b", "animals/c"]
    assert runner.fmt_time(3725) == "1:02:05" and runner.fmt_time(65) == "1:05"


def test_runner_server_keeps_the_loaders_cached_unless_told_otherwise():
    runner = load_runner()
    # ComfyUI's default cache drops nodes absent from the last prompt: edit and metric prompts alternate
    assert runner.server_args(None) == ["--cache-lru", "32"]
    assert runner.server_args(["--lowvram"]) == ["--lowvram", "--cache-lru", "32"]
    for mode in (["--cache-none"], ["--cache-lru", "4"], ["--cache-lru=4"], ["--cache-ram"], ["--cache-classic"]):
        assert runner.server_args(mode) == mode
