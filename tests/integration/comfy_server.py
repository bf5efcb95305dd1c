"""A small stdlib client that starts a real ComfyUI server with this pack and runs API prompts.

Used by the integration tests and benchmarks/bench_nodes.py. Configuration (environment):

* ``COMFYUI_ROOT``: the ComfyUI checkout (required; else the pack's parent if it sits in
  ``ComfyUI/custom_nodes``).
* ``COMFYUI_PYTHON``: the python that runs ComfyUI (default ``$COMFYUI_ROOT/../venv/bin/python`` if
  it exists, else this python).
* ``FASTDRAG_TEST_DEVICE``: ``cpu`` (default, adds ``--cpu``) or ``gpu``.
* ``FASTDRAG_TEST_CKPT``: an existing SD1.5-architecture checkpoint to use instead of building the
  tiny random one (built once with ``make_tiny_ckpt.py`` from ``COMFY_HARNESS_DIR``, cached in
  ``~/.cache/comfyui-fastdrag``).
* ``FASTDRAG_REQUIRE_SERVER=1`` (``.ci/run`` sets it): a missing ComfyUI, harness or browser is a
  test error, not a skip, so CI never passes without running the real-server and browser tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TESTPACK = os.path.join(HERE, "fastdrag_testpack")
CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "comfyui-fastdrag")


def find_comfyui() -> tuple[str | None, str]:
    """(ComfyUI root or None, reason)."""
    root = os.environ.get("COMFYUI_ROOT")
    if root:
        if os.path.isfile(os.path.join(root, "main.py")):
            return root, ""
        return None, f"COMFYUI_ROOT={root} has no main.py"
    parent = os.path.dirname(REPO)
    if os.path.basename(parent) == "custom_nodes" and os.path.isfile(os.path.join(os.path.dirname(parent), "main.py")):
        return os.path.dirname(parent), ""
    return None, ("no ComfyUI: set COMFYUI_ROOT to a ComfyUI checkout (and COMFYUI_PYTHON to its python) "
                  "to run the real-server integration tests")


def comfy_python(root: str) -> str:
    py = os.environ.get("COMFYUI_PYTHON")
    if py:
        return py
    venv = os.path.join(os.path.dirname(root), "venv", "bin", "python")
    return venv if os.path.exists(venv) else sys.executable


class NoTestCheckpoint(RuntimeError):
    """No checkpoint to test with and no harness script to build one (the tests skip with this)."""


def harness_dir() -> str:
    return os.environ.get("COMFY_HARNESS_DIR",
                          os.path.join(os.path.dirname(REPO), "shared", "tools", "comfy-harness"))


def server_required() -> bool:
    """True when the real-server and browser tests must run (CI): skipping them is then an error."""
    return os.environ.get("FASTDRAG_REQUIRE_SERVER", "") not in ("", "0")


def skip_or_fail(reason: str):
    """pytest: skip with ``reason``, or fail under FASTDRAG_REQUIRE_SERVER=1 (CI must run the test)."""
    import pytest

    if server_required():
        pytest.fail(f"FASTDRAG_REQUIRE_SERVER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def tiny_checkpoint(root: str, py: str, kind: str = "sd15") -> str:
    """Path of a tiny random test checkpoint, built once (cached in ``~/.cache/comfyui-fastdrag``).

    ``kind``: ``sd15`` (the harness's tiny SD1.5: 2 levels, 7 attn1 layers), ``sd15_layout`` (SD1.5's
    4-level UNet layout at 320 channels), ``sdxl``, ``sd2v`` (see ``make_test_ckpt.py``); all with
    the TAESD VAE. ``FASTDRAG_TEST_CKPT`` replaces the ``sd15`` one."""
    ckpt = os.environ.get("FASTDRAG_TEST_CKPT")
    if ckpt and kind == "sd15":
        return ckpt
    name = "tiny_sd15_taesd.safetensors" if kind == "sd15" else f"tiny_{kind}_taesd.safetensors"
    path = os.path.join(CACHE, name)
    if os.path.exists(path):
        return path
    script = os.path.join(harness_dir(), "make_tiny_ckpt.py")
    if not os.path.exists(script):
        raise NoTestCheckpoint(f"no test checkpoint: set FASTDRAG_TEST_CKPT to an SD1.5 checkpoint, or "
                               f"COMFY_HARNESS_DIR to the comfy-harness folder with make_tiny_ckpt.py "
                               f"(not found: {script})")
    os.makedirs(CACHE, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.safetensors"  # written aside, then renamed: parallel runs never read half a file
    subprocess.run([py, os.path.join(HERE, "make_test_ckpt.py"), harness_dir(), root, kind, tmp], check=True,
                   cwd=root, stdout=subprocess.DEVNULL)
    os.replace(tmp, path)
    return path


def pattern_png(w: int = 128, h: int = 128, variant: int = 0) -> bytes:
    """A deterministic RGB pattern (gradient, square, disc) as PNG bytes (stdlib only); ``variant``
    moves the square, for a different image with the same statistics."""
    rows = []
    d = variant * max(1, w // 64)
    for y in range(h):
        row = bytearray([0])
        for x in range(w):
            r, g, b = x * 255 // (w - 1), y * 255 // (h - 1), 96
            if w // 4 + d <= x < w // 2 + d and h // 4 <= y < h // 2:
                r, g, b = 240, 240, 32
            if (x - 3 * w // 4) ** 2 + (y - 3 * h // 4) ** 2 < (w // 8) ** 2:
                r, g, b = 32, 64, 230
            row += bytes((r, g, b))
        rows.append(bytes(row))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) + chunk(b"IEND", b""))


def free_port() -> int:
    """A port the OS reports free on 127.0.0.1 (never a fixed range: two runs may share a machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PromptError(Exception):
    def __init__(self, kind, node_id, node_type, message, data):
        super().__init__(f"{kind} in node {node_id} ({node_type}): {message}")
        self.kind, self.node_id, self.node_type, self.message, self.data = kind, node_id, node_type, message, data


PACK_NAME = "comfyui-fastdrag"  # the pack's folder in custom_nodes (templates are listed under it)
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Workflow.ShowMissingModelsWarning": False,
            "Comfy.Workflow.ShowMissingNodesWarning": False}  # the front end opens on the graph


class ComfyServer:
    """Start ComfyUI with this pack (+ the test pack) in a temporary base directory; stop it by PID."""

    def __init__(self, root: str, port: int | None = None, extra_args: list[str] | None = None,
                 test_pack: bool = True):
        self.root = root
        self.py = comfy_python(root)
        ckpt = tiny_checkpoint(root, self.py)  # first: raises NoTestCheckpoint before anything is made
        self.port = port or free_port()
        self.base = tempfile.mkdtemp(prefix=f"fastdrag_it_{self.port}_")
        self.url = f"http://127.0.0.1:{self.port}"
        for d in ("input", "output", "temp", "user", "custom_nodes", "models/checkpoints", "models/loras",
                  "models/controlnet"):
            os.makedirs(os.path.join(self.base, d), exist_ok=True)
        self.ckpt_name = os.path.basename(ckpt)
        os.symlink(ckpt, os.path.join(self.base, "models", "checkpoints", self.ckpt_name))
        self.ckpt_names = {"sd15": self.ckpt_name}
        os.symlink(REPO, os.path.join(self.base, "custom_nodes", PACK_NAME))
        if test_pack:
            os.symlink(TESTPACK, os.path.join(self.base, "custom_nodes", "fastdrag_testpack"))
        with open(os.path.join(self.base, "input", "fastdrag_test.png"), "wb") as f:
            f.write(pattern_png())
        os.makedirs(os.path.join(self.base, "user", "default"), exist_ok=True)
        with open(os.path.join(self.base, "user", "default", "comfy.settings.json"), "w") as f:
            json.dump(SETTINGS, f)
        args = [self.py, "main.py", "--listen", "127.0.0.1", "--port", str(self.port), "--base-directory", self.base,
                "--database-url", f"sqlite:///{self.base}/user/comfyui.db", "--disable-auto-launch",
                "--preview-method", "none"]
        if os.environ.get("FASTDRAG_TEST_DEVICE", "cpu") == "cpu":
            args.append("--cpu")
        args += extra_args or []
        self.log_path = os.path.join(self.base, "server.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=root, stdout=self.log, stderr=subprocess.STDOUT)
        self.client_id = uuid.uuid4().hex

    def wait_ready(self, timeout: float = 240) -> "ComfyServer":
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get("/system_stats", timeout=2)
                return self
            except (OSError, ValueError):
                time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"ComfyUI not ready after {timeout}s:\n{self.log_tail()}")

    def add_checkpoint(self, kind: str) -> str:
        """Builds (once) and links the tiny ``kind`` checkpoint into this server; returns its name for
        ``CheckpointLoaderSimple`` (ComfyUI rescans the folder on the next prompt)."""
        if kind not in self.ckpt_names:
            path = tiny_checkpoint(self.root, self.py, kind)
            name = os.path.basename(path)
            link = os.path.join(self.base, "models", "checkpoints", name)
            if not os.path.exists(link):
                os.symlink(path, link)
            self.ckpt_names[kind] = name
        return self.ckpt_names[kind]

    def log_text(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    # -- HTTP --------------------------------------------------------------------------------
    def _http(self, method, path, data=None, timeout=30):
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def write_input(self, name: str, data: bytes):
        with open(os.path.join(self.base, "input", name), "wb") as f:
            f.write(data)

    def get(self, path, timeout=30):
        status, body = self._http("GET", path, timeout=timeout)
        if status != 200:
            raise OSError(f"GET {path} -> {status}")
        return json.loads(body)

    def submit(self, prompt: dict) -> str:
        """Queue an API prompt; return its id. Raises PromptError(kind='validation') on a rejected prompt."""
        status, body = self._http("POST", "/prompt", json.dumps({"prompt": prompt, "client_id": self.client_id}).encode())
        resp = json.loads(body)
        if status != 200 or resp.get("node_errors"):
            for nid, ne in (resp.get("node_errors") or {}).items():
                msg = "; ".join(f"{e.get('message')}: {e.get('details')}" for e in ne.get("errors", []))
                raise PromptError("validation", nid, ne.get("class_type"), msg, resp)
            raise PromptError("validation", None, None, json.dumps(resp.get("error")), resp)
        return resp["prompt_id"]

    def wait(self, pid: str, timeout: float = 900, raise_errors: bool = True) -> dict:
        """Wait for a queued prompt; return its history entry. Raises PromptError(kind='execution')
        on an execution error unless ``raise_errors`` is False."""
        t0 = time.time()
        while time.time() - t0 < timeout:
            h = self.get(f"/history/{pid}")
            if pid in h:
                st = h[pid].get("status", {})
                if st.get("completed") or st.get("status_str") == "error":
                    for kind, data in st.get("messages", []):
                        if kind == "execution_error" and raise_errors:
                            raise PromptError("execution", data.get("node_id"), data.get("node_type"),
                                              f"{data.get('exception_type')}: {data.get('exception_message')}", data)
                    return h[pid]
            time.sleep(0.05)
        self.interrupt()
        raise TimeoutError(f"prompt {pid} not done after {timeout}s")

    def run(self, prompt: dict, timeout: float = 900) -> dict:
        """Queue an API prompt and wait for it (see submit / wait)."""
        return self.wait(self.submit(prompt), timeout)

    def interrupt(self):
        self._http("POST", "/interrupt", b"")

    def running(self) -> bool:
        return bool(self.get("/queue").get("queue_running"))

    def texts(self, entry: dict, node_id: str) -> list[str]:
        return entry.get("outputs", {}).get(node_id, {}).get("text", [])
