"""benchmarks/drag_edit.py (the README's main job) against the real server: one DragBench sample
(image, mask, points, prompt) edited headless over HTTP, and the bundled points rescaled onto an
image of another size."""

import os
import subprocess
import sys

from PIL import Image

from dragbench_data import SAMPLES, make_dragbench, png, texture

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EDIT = os.path.join(REPO, "benchmarks", "drag_edit.py")


def run_cli(*args):
    r = subprocess.run([sys.executable, EDIT, *args], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    return r.returncode, r.stdout + r.stderr


def test_headless_edit(server, tmp_path):
    root = str(tmp_path / "bench")
    make_dragbench(root, with_unsafe=False)
    out = str(tmp_path / "sample.png")
    cat, name, (w, h), *_ = SAMPLES[1]  # 72x60, no mask
    rc, log = run_cli("--dragbench", root, "--sample", f"{cat}/{name}", "--checkpoint", server.ckpt_name,
                      "--url", server.url, "--out", out)
    assert rc == 0, log
    with Image.open(out) as im:
        assert im.size == (w // 8 * 8, h // 8 * 8)
    assert f"DragBench {cat}/{name} ({w}x{h}, 2 drag(s), no mask)" in log
    assert "the edit took" in log and "s in the server" in log and "random" not in log

    # the bundled points (placed on 256x256) on a 64x64 picture, with a mask file
    (tmp_path / "img.png").write_bytes(png(texture(64, 64, 4)))
    Image.new("L", (64, 64), 255).save(tmp_path / "mask.png")
    out = str(tmp_path / "own.png")
    rc, log = run_cli("--image", str(tmp_path / "img.png"), "--points", os.path.join(REPO, "benchmarks", "data",
                      "sample_points.json"), "--mask", str(tmp_path / "mask.png"), "--checkpoint", server.ckpt_name,
                      "--url", server.url, "--out", out, "--set", "steps=4")
    assert rc == 0, log
    with Image.open(out) as im:
        assert im.size == (64, 64)
    assert '"steps": 4' in log and "2 drag(s), mask" in log

    rc, log = run_cli("--url", server.url)
    assert rc != 0 and "with --url give --checkpoint" in log
