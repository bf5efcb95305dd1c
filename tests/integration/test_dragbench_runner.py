"""benchmarks/dragbench.py end to end against the real server (``--url``), on a DragBench-format
set made here: 3 samples in two categories (real pickle files), one unsafe pickle and the whole
hostile corpus (tests/hostile_dragbench.py). Edits with the tiny SD1.5 checkpoint, DIFT on the tiny
SD1.5-layout one, LPIPS on random AlexNet weights; then a resumed run that skips everything; then
an edit that ComfyUI would answer from its cache, scored without the LPIPS weights."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from comfy_server import skip_or_fail
from dragbench_data import ALEXNET_FILE, SAMPLES, UNSAFE, install_random_alexnet, lpips_lin_weights, make_dragbench

from tests import hostile_dragbench as hd

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNNER = os.path.join(REPO, "benchmarks", "dragbench.py")
KEYS = {"md", "if", "seconds_per_image", "seconds_per_point", "n_samples", "n_points", "n_md", "n_if"}


def run_cli(*args, timeout=600):
    r = subprocess.run([sys.executable, RUNNER, *args], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    return r.returncode, r.stdout + r.stderr


@pytest.fixture(scope="module")
def bench_run(server, tmp_path_factory):
    if lpips_lin_weights(server) is None:
        skip_or_fail(f"lpips is not importable by ComfyUI's python {server.py} (.ci/run installs it: "
                     f"{server.py} -m pip install --no-deps lpips==0.1.4)")
    install_random_alexnet(server)
    root = str(tmp_path_factory.mktemp("dragbench"))
    marker = os.path.join(root, "pwned")
    make_dragbench(root, marker=marker)
    hd.write_corpus(root, "hostile")
    out = str(tmp_path_factory.mktemp("results"))
    args = ["--dragbench", root, "--method", "fastdrag", "--checkpoint", server.ckpt_name,
            "--dift-checkpoint", server.add_checkpoint("sd15_layout"), "--url", server.url, "--out", out]
    rc, log = run_cli(*args)
    assert rc == 0, log
    return root, out, args, log, marker


def test_results_layout_and_summary(bench_run):
    root, out, _, log, marker = bench_run
    assert not os.path.exists(marker)
    for cat, name, (w, h), points, _, _ in SAMPLES:
        d = os.path.join(out, cat, name)
        with Image.open(os.path.join(d, "dragged_image.png")) as im:
            assert im.size == (w // 8 * 8, h // 8 * 8)  # FastDrag edits the VAE-cropped image
        edit, met = (json.load(open(os.path.join(d, f))) for f in ("edit.json", "metrics.json"))
        assert edit["method"] == "fastdrag" and edit["settings"] == {"steps": 10, "strength": 0.7, "cfg": 1.0}
        assert edit["n_points"] == len(points) // 2 and edit["seconds"] > 0
        assert [m["handle"] for m in met["matches"]] == [list(map(float, p)) for p in points[0::2]]
        assert [m["target"] for m in met["matches"]] == [list(map(float, p)) for p in points[1::2]]
        for m in met["matches"]:
            assert 0 <= m["matched"][0] < w and 0 <= m["matched"][1] < h
            assert m["distance"] == pytest.approx(np.hypot(m["target"][0] - m["matched"][0],
                                                           m["target"][1] - m["matched"][1]))
        assert 0 < met["if"] < 1 and met["md"] == pytest.approx(np.mean([m["distance"] for m in met["matches"]]))
    assert not os.path.exists(os.path.join(out, *UNSAFE, "dragged_image.png"))

    s = json.load(open(os.path.join(out, "summary.json")))
    assert set(s) == {"overall", "categories", "failed", "run", "complete", "not_run", "missing_metrics"}
    assert s["complete"] and not s["not_run"] and not s["missing_metrics"]  # hostile files are the samples' own
    assert set(s["overall"]) == KEYS and set(s["categories"]) == {"art_work", "animals"}
    for c in s["categories"].values():
        assert set(c) == KEYS
    # recomputed from the per-sample files: MD over all points, IF over images, seconds per point
    metrics = [json.load(open(os.path.join(out, c, n, "metrics.json"))) for c, n, *_ in SAMPLES]
    edits = [json.load(open(os.path.join(out, c, n, "edit.json"))) for c, n, *_ in SAMPLES]
    assert s["overall"]["n_samples"] == 3 and s["overall"]["n_points"] == 4
    assert s["overall"]["md"] == pytest.approx(np.mean([m["distance"] for x in metrics for m in x["matches"]]))
    assert s["overall"]["if"] == pytest.approx(np.mean([x["if"] for x in metrics]))
    assert s["overall"]["seconds_per_image"] == pytest.approx(np.mean([e["seconds"] for e in edits]))
    assert s["overall"]["seconds_per_point"] == pytest.approx(sum(e["seconds"] for e in edits) / 4)
    assert s["categories"]["animals"]["n_samples"] == 2 and s["categories"]["art_work"]["n_points"] == 1
    failed = {f["sample"]: f for f in s["failed"]}
    assert len(failed) == 1 + len(hd.CASES) and all(f["kind"] == "data" for f in s["failed"])
    unsafe = failed["/".join(UNSAFE)]["error"]
    assert unsafe.startswith("read: ") and "posix.system" in unsafe
    for case in hd.CASES:  # every hostile sample refused for its own file, named, briefly
        err = failed[f"hostile/{case.name}"]["error"]
        assert err.startswith(f"read: {root}/hostile/{case.name}/{case.file}: ") and case.expect in err.lower(), err
        assert len(err) < 400 + len(root)
    assert s["run"]["dift"] == {"t": 261, "up_ft_index": 1, "ensemble": 8, "seed": 42}

    md = open(os.path.join(out, "summary.md")).read()
    assert "| **overall** | **3** | **4** |" in md and "posix.system" in md and "INCOMPLETE" not in md
    for cat in ("animals", "art_work"):
        with Image.open(os.path.join(out, "contact_sheets", f"{cat}.png")) as im:
            assert im.size[0] == 2 * 256 + 24 and im.size[1] > 256
    assert "ETA" in log and "FAILED (data) read:" in log and "overall" in log


def test_resume_skips_done_samples(bench_run):
    root, out, args, _, _ = bench_run
    before = json.load(open(os.path.join(out, "summary.json")))
    rc, log = run_cli(*args)
    assert rc == 0, log
    assert log.count("skipped, result exists") == 3
    after = json.load(open(os.path.join(out, "summary.json")))
    assert after["overall"] == before["overall"] and after["categories"] == before["categories"]
    assert after["failed"] == before["failed"]
    # another checkpoint into the same folder is refused rather than mixed in
    other = list(args)
    other[other.index("--checkpoint") + 1] = other[other.index("--dift-checkpoint") + 1]
    rc, log = run_cli(*other)
    assert rc != 0 and "use another --out" in log


def test_custom_workflow_and_settings(bench_run, server, tmp_path):
    """--workflow with marks (here the shipped FastDrag one with other defaults) and --set. MD on the
    edit checkpoint (the tiny UNet has no up block 1) fails: IF and the time are still reported (14.7)."""
    root, _, args, _, _ = bench_run
    wf = json.load(open(os.path.join(REPO, "benchmarks", "workflows", "fastdrag.json")))
    wf["_marks"]["defaults"] = {"steps": 4, "strength": 0.5}
    path = str(tmp_path / "wf.json")
    json.dump(wf, open(path, "w"))
    out = str(tmp_path / "out")
    rc, log = run_cli("--dragbench", root, "--workflow", path, "--checkpoint", server.ckpt_name, "--url", server.url,
                      "--out", out, "--samples", "art_work", "--set", "cfg=1.0", "--limit", "1")
    assert rc == 1, log  # incomplete: no MD
    edit = json.load(open(os.path.join(out, SAMPLES[2][0], SAMPLES[2][1], "edit.json")))
    assert edit["method"] == "workflow:wf.json" and edit["settings"] == {"steps": 4, "strength": 0.5, "cfg": 1.0}
    assert "MD uses the edit checkpoint" in log
    s = json.load(open(os.path.join(out, "summary.json")))
    assert s["overall"]["n_if"] == 1 and s["overall"]["if"] is not None and s["overall"]["md"] is None
    assert s["overall"]["seconds_per_image"] == pytest.approx(edit["seconds"]) and not s["failed"]
    [miss] = s["missing_metrics"]
    assert miss["metric"] == "md" and "up block 1 is not available" in miss["reason"] and not s["complete"]
    del wf["_marks"]["defaults"]["steps"]
    json.dump(wf, open(path, "w"))
    rc, log = run_cli("--dragbench", root, "--workflow", path, "--checkpoint", server.ckpt_name, "--url", server.url,
                      "--out", str(tmp_path / "out2"), "--limit", "1", "--set", "cfg=1.0")
    assert rc != 0 and "no value for {{steps}}; give it with --set steps=VALUE" in log


def test_dragdiffusion_method(bench_run, server, tmp_path):
    root = bench_run[0]
    out = str(tmp_path / "dd")
    rc, log = run_cli("--dragbench", root, "--method", "dragdiffusion", "--checkpoint", server.add_checkpoint("sd15_layout"),
                      "--url", server.url, "--out", out, "--samples", "art_work", "--limit", "1",
                      "--set", "steps=10", "--set", "drag_steps=2", "--set", "lora_steps=1")
    assert rc == 0, log
    s = json.load(open(os.path.join(out, "summary.json")))
    assert s["overall"]["n_samples"] == 1 and not s["failed"], s
    cat, name = SAMPLES[2][:2]
    edit = json.load(open(os.path.join(out, cat, name, "edit.json")))
    assert edit["method"] == "dragdiffusion" and edit["settings"] == {
        "steps": 10, "strength": 0.7, "drag_steps": 2, "lora_steps": 1, "cfg": 1.0}, edit  # the LoRA step ran too
    with Image.open(os.path.join(out, cat, name, "dragged_image.png")) as im:
        assert im.size == (64, 64)


def test_cached_edit_is_timed_honestly_and_one_missing_metric_keeps_the_other(bench_run, server, tmp_path):
    """Issue 13.6 / 14.7. The runner's first edit prompt is exactly the server's last prompt, so
    ComfyUI answers it from its cache in milliseconds; the runner must edit again (a fresh upload
    name) and report that time. The run has no LPIPS AlexNet weights (offline): its MD and time are
    still reported, IF is marked missing with the reason, the summary says incomplete, exit status 1."""
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import dragbench as rn

    root = bench_run[0]
    cat, name = SAMPLES[2][:2]
    ref = rn.db.find_sample(rn.db.list_samples(root), f"{cat}/{name}")
    img, meta = rn.load_sample(ref)
    src, mask = rn.upload_sample(server, ref, img, meta)  # what the runner uploads, and its edit prompt:
    wf, defaults, _ = rn.mw.load_workflow(rn.METHODS["fastdrag"])
    values = {**defaults, "steps": 3, "image": src, "mask": mask, "points": meta.points_json(*img.size),
              "prompt": meta.prompt, "checkpoint": server.ckpt_name, "output": f"dragbench/{cat}/{name}/dragged"}
    _, first, _ = rn.mw.run_edit(server, wf, values)
    weights = os.path.join(server.base, "torch_home", "hub", "checkpoints", ALEXNET_FILE)
    os.replace(weights, weights + ".away")
    try:
        rc, log = run_cli("--dragbench", root, "--method", "fastdrag", "--checkpoint", server.ckpt_name, "--url",
                          server.url, "--samples", f"{cat}/{name}", "--dift-checkpoint",
                          server.add_checkpoint("sd15_layout"), "--out", str(tmp_path / "b"), "--metrics", "md,if",
                          "--set", "steps=3", "--ensemble", "1")
    finally:
        os.replace(weights + ".away", weights)
    edit = json.load(open(os.path.join(tmp_path, "b", cat, name, "edit.json")))
    assert rc == 1, (log, first, edit)
    assert "answered the edit from its cache" in log and edit["timing"].startswith("first answer came from"), \
        (log, first, edit)
    assert edit["seconds"] > 0.3 * first, (first, edit["seconds"])
    s = json.load(open(os.path.join(tmp_path, "b", "summary.json")))
    o = s["overall"]
    assert o["n_samples"] == 1 and o["n_md"] == 1 and o["md"] is not None and o["if"] is None and o["n_if"] == 0
    assert o["seconds_per_image"] == pytest.approx(edit["seconds"])
    [miss] = s["missing_metrics"]
    assert miss["sample"] == f"{cat}/{name}" and miss["metric"] == "if" and "AlexNet" in miss["reason"]
    assert s["complete"] is False and s["run"]["metrics"] == ["md", "if"]
