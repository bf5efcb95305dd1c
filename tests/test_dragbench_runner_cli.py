"""benchmarks/dragbench.py without ComfyUI: its options, the output-folder checks made before any
work, the cache detection, and a server that dies mid-run (a stdlib HTTP server playing ComfyUI)."""

import json
import os
import pickle
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from tests import hostile_dragbench as hd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(REPO, "benchmarks", "dragbench.py")
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import dragbench as runner  # noqa: E402


def cli(*args, timeout=120):
    r = subprocess.run([sys.executable, RUNNER, *args], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    return r.returncode, r.stdout + r.stderr


def make_set(root, n_valid=2, hostile=("forged_pointer_points",)):
    for k in range(n_valid):
        hd.write_case(os.path.join(root, "animals", f"s{k}"), hd.Case("v", hd.valid_meta_bytes(), hd.good_png(), ""))
    hd.write_corpus(root, "art_work", [c for c in hd.CASES if c.name in hostile])


def test_metrics_option(tmp_path):
    base = ["--dragbench", str(tmp_path), "--method", "fastdrag", "--checkpoint", "c", "--out", str(tmp_path / "o")]
    assert runner.parse_args(base).metrics == ("md", "if")
    assert runner.parse_args(base + ["--metrics", "IF"]).metrics == ("if",)
    assert runner.parse_args(base + ["--metrics", "if, md"]).metrics == ("md", "if")
    assert runner.parse_args(base + ["--metrics", "none"]).metrics == ()
    with pytest.raises(SystemExit):
        runner.parse_args(base + ["--metrics", "md,lpips"])


def test_cache_detection_covers_the_sample_nodes_only():
    wf, _, _ = runner.mw.load_workflow(runner.METHODS["fastdrag"])
    assert runner.sample_nodes(wf) == {"image", "mask", "points", "edit", "save"}  # not ckpt, not the prompt
    entry = {"status": {"messages": [["execution_start", {}], ["execution_cached", {"nodes": ["ckpt", "prompt"]}]]}}
    assert runner.cached_nodes(entry) & runner.sample_nodes(wf) == set()
    entry["status"]["messages"][1][1]["nodes"] += ["edit"]
    assert runner.cached_nodes(entry) & runner.sample_nodes(wf) == {"edit"}


def test_output_folder_checks(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    with pytest.raises(runner.OutputError, match="is a file, not a folder"):
        runner.check_out_dir(str(f), 0)
    with pytest.raises(runner.OutputError, match="cannot write into --out"):
        runner.check_out_dir("/proc/dragbench_results", 0)  # not writable, even for root
    free = __import__("shutil").disk_usage(str(tmp_path)).free
    with pytest.raises(runner.OutputError, match="MiB free; this run needs about"):
        runner.check_out_dir(str(tmp_path / "ok"), free + (1 << 30))
    runner.check_out_dir(str(tmp_path / "ok"), 0)
    assert os.listdir(tmp_path / "ok") == []  # the probe is gone


@pytest.mark.parametrize("out", ["file", "/proc/dragbench_results"])
def test_unusable_output_folder_stops_before_the_server(tmp_path, out):
    make_set(str(tmp_path / "db"), n_valid=1, hostile=())
    if out == "file":
        out = str(tmp_path / "results")
        open(out, "w").close()
    rc, log = cli("--dragbench", str(tmp_path / "db"), "--method", "fastdrag", "--checkpoint", "c",
                  "--out", out, "--url", "http://127.0.0.1:9")
    assert rc == 1 and "nothing was edited" in log and "--out" in log, log
    assert "no ComfyUI answers" not in log  # refused before contacting any server


class DyingComfy(BaseHTTPRequestHandler):
    """Enough of ComfyUI for the runner to start; it dies (closes its socket) on the first prompt."""

    server_ref = None

    def log_message(self, *args):
        pass

    def _reply(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/object_info/"):
            cls = self.path.rsplit("/", 1)[1]
            return self._reply({cls: {"input": {"required": {"ckpt_name": [["tiny.safetensors"]]}}}})
        self._reply({})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/upload/image":
            return self._reply({"name": "original_image.png", "subfolder": "dragbench"})
        if self.path == "/prompt":
            self._reply({"prompt_id": "p1", "number": 0, "node_errors": {}})
            threading.Thread(target=lambda: (self.server.shutdown(), self.server.server_close())).start()
            return
        self._reply({})


def test_server_killed_mid_run(tmp_path):
    """The server dies during the first edit: the runner stops, says which samples were not run,
    writes a summary saying it is incomplete (the older one is gone) and exits non-zero."""
    root, out = str(tmp_path / "db"), tmp_path / "out"
    make_set(root, n_valid=2, hostile=("forged_pointer_points", "mask_1e12_claim"))
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"stale": True}))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), DyingComfy)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    rc, log = cli("--dragbench", root, "--method", "fastdrag", "--checkpoint", "tiny.safetensors", "--out", str(out),
                  "--url", f"http://127.0.0.1:{httpd.server_address[1]}")
    assert rc == 1, log
    s = json.load(open(out / "summary.json"))
    assert "stale" not in s and s["complete"] is False and s["overall"]["n_samples"] == 0
    assert {f["sample"]: f["kind"] for f in s["failed"]} == {"art_work/forged_pointer_points": "data",
                                                             "art_work/mask_1e12_claim": "data"}
    assert [n["sample"] for n in s["not_run"]] == ["animals/s0", "animals/s1"]
    assert all("the server stopped answering during animals/s0" in n["reason"] for n in s["not_run"])
    assert "INCOMPLETE" in open(out / "summary.md").read()
