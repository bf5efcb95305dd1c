"""DragDiffusionLoRA's save_name in the real server (issue 13.7): every name that is not a plain file
name inside the loras folder, every link out of it, and every existing file are refused before any
training, naming the file relative to the loras folder; a file the node wrote earlier is replaced
only with overwrite on."""

import os
import time

import pytest
import torch
import test_lora_server as tls

LONG = 10_000  # training steps no refusal may wait for (minutes of training on the tiny model)


def node_error(server, pid, timeout=60):
    entry = server.wait(pid, timeout=timeout, raise_errors=False)
    errs = [d for kind, d in entry["status"]["messages"] if kind == "execution_error"]
    return errs[0] if errs else None


def test_hostile_save_names_are_refused_before_training(server, tmp_path):
    server.write_input(tls.IMAGE, tls.pattern_png(96, 64))
    loras = os.path.realpath(tls.loras_dir(server))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "theirs.safetensors").write_bytes(b"x")
    os.symlink(outside, os.path.join(loras, "linkout"))
    os.symlink(outside / "theirs.safetensors", os.path.join(loras, "evil.safetensors"))
    os.makedirs(os.path.join(loras, "afolder.safetensors"))
    with open(os.path.join(loras, "mine_before.safetensors"), "wb") as f:
        f.write(tls.safetensors_bytes({"w": torch.zeros(1)}, {"fastdrag_node": "DragDiffusionLoRA"}))
    rule = "must be a file name inside the loras folder"
    cases = {
        "n" * 256: "longer than 240 bytes",
        "sub/" + "n" * 230: "longer than 240 bytes",
        "nul\x00name": rule,
        "x.safetensors/": rule,
        ".": rule,
        "..": rule,
        "a/../b": rule,
        "a//b": rule,
        "line\nbreak": rule,
        "tab\there": rule,
        "del\x7f": rule,
        ".safetensors": rule,
        "linkout/new": "leads out of the loras folder",
        "evil": "leads out of the loras folder",
        "afolder": "loras/afolder.safetensors is a folder",
        "mine_before": "loras/mine_before.safetensors already exists (an earlier DragDiffusionLoRA run wrote it); "
                       "turn on overwrite",
    }
    t0 = time.time()
    pids = {}
    for name in cases:
        p = tls.graph(server.ckpt_name)
        p["lora"] = tls.lora_node(save_name=name, **{**tls.TRAIN, "steps": LONG})
        pids[name] = server.submit(p)
    bad = []
    for name, needle in cases.items():
        err = node_error(server, pids[name])
        msg = err["exception_message"] if err else ""
        if (not err or err["node_type"] != "DragDiffusionLoRA" or not msg.startswith("DragDiffusionLoRA: ")
                or needle not in msg or server.base in msg or loras in msg or len(msg) > 300):
            bad.append((name[:40], msg[:200]))
    assert not bad, bad
    assert time.time() - t0 < 60  # no prompt trained its 10,000 steps
    assert not os.path.exists(outside / "new.safetensors") and (outside / "theirs.safetensors").read_bytes() == b"x"
    assert not [f for f in os.listdir(loras) if "\n" in f or "\t" in f or f.startswith("..")]


def test_overwrite_replaces_only_when_asked(server):
    server.write_input(tls.IMAGE, tls.pattern_png(96, 64))
    path = os.path.join(tls.loras_dir(server), "fastdrag_it_overwrite.safetensors")
    with open(path, "wb") as f:
        f.write(tls.safetensors_bytes({"w": torch.zeros(1)}, {"fastdrag_node": "DragDiffusionLoRA", "fastdrag_seed": "old"}))
    p = tls.graph(server.ckpt_name)
    p["lora"] = tls.lora_node(save_name="fastdrag_it_overwrite", **{**tls.TRAIN, "steps": 1, "batch_size": 1})
    with pytest.raises(tls.PromptError, match="already exists"):
        server.run(p)
    p["lora"]["inputs"]["overwrite"] = True
    entry = server.run(p)
    tensors, metadata = tls.read_safetensors(path)
    assert metadata["fastdrag_seed"] == "0" and len(tensors) > 1
    assert "saved to fastdrag_it_overwrite.safetensors (loras)" in server.texts(entry, "lora")[0]
