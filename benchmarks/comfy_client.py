"""A small stdlib client for ComfyUI's HTTP API, and a headless ComfyUI process with this pack.

Shared by ``benchmarks/dragbench.py``, ``benchmarks/drag_edit.py``, ``benchmarks/bench_nodes.py``
and the integration tests (``tests/integration/comfy_server.py`` builds its test server on
:class:`ComfyProcess`). Only the standard library: it runs in any Python, not only ComfyUI's.

* :class:`ComfyClient` talks to a running server: queue an API-format prompt and wait for it,
  upload an image to the input folder, download an output image, list node classes.
* :class:`ComfyProcess` starts ``main.py`` of a ComfyUI checkout headless in its own run folder
  (a ``--base-directory`` with this pack linked into ``custom_nodes``; the checkout's
  ``models`` folders are added with an extra-model-paths file, so its checkpoints are found),
  on a free port, and stops it by PID.
* :func:`tiny_checkpoint` builds a tiny random test checkpoint with the harness's
  ``make_tiny_ckpt.py`` (cached in ``~/.cache/comfyui-fastdrag``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "comfyui-fastdrag")
PACK_NAME = "comfyui-fastdrag"

# Model folders of a ComfyUI checkout made visible to a run folder (extra model paths).
MODEL_FOLDERS = ("checkpoints", "text_encoders", "clip", "clip_vision", "configs", "controlnet",
                 "diffusion_models", "unet", "embeddings", "loras", "upscale_models", "vae", "vae_approx")


# ------------------------------------------------------------------------------------- locating
def harness_comfyui() -> str:
    """Where the comfy-harness's ``setup.sh`` puts ComfyUI: ``$COMFY_ROOT/ComfyUI`` (default
    ``~/.cache/comfy-harness/ComfyUI``)."""
    base = os.environ.get("COMFY_ROOT") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "comfy-harness")
    return os.path.join(base, "ComfyUI")


def find_comfyui(root: str | None = None) -> tuple[str | None, str]:
    """(ComfyUI root or None, reason): ``root``, else ``COMFYUI_ROOT``, else the pack's parent when
    the pack sits in ``ComfyUI/custom_nodes``, else the harness's ComfyUI when it was set up."""
    root = root or os.environ.get("COMFYUI_ROOT")
    if root:
        root = os.path.abspath(os.path.expanduser(root))
        if os.path.isfile(os.path.join(root, "main.py")):
            return root, ""
        return None, f"{root} has no main.py (not a ComfyUI checkout)"
    parent = os.path.dirname(REPO)
    if os.path.basename(parent) == "custom_nodes" and os.path.isfile(os.path.join(os.path.dirname(parent), "main.py")):
        return os.path.dirname(parent), ""
    if os.path.isfile(os.path.join(harness_comfyui(), "main.py")):
        return harness_comfyui(), ""
    return None, ("no ComfyUI: set COMFYUI_ROOT to a ComfyUI checkout (and COMFYUI_PYTHON to its python), "
                  "pass --comfyui / --url, or set one up with: bash scripts/setup_comfyui.sh")


def comfy_python(root: str) -> str:
    """``COMFYUI_PYTHON``, else a venv next to or inside the checkout, else this python."""
    py = os.environ.get("COMFYUI_PYTHON")
    if py:
        return py
    for venv in (os.path.join(os.path.dirname(root), "venv"), os.path.join(root, "venv"), os.path.join(root, ".venv")):
        exe = os.path.join(venv, "bin", "python")
        if os.path.exists(exe):
            return exe
    return sys.executable


def torch_has_accelerator(python: str) -> bool:
    """Whether the torch of ``python`` was built for CUDA/ROCm (or runs on macOS, where ComfyUI uses
    MPS), read from ``torch/version.py`` without importing torch. ComfyUI needs ``--cpu`` otherwise."""
    if sys.platform == "darwin":
        return True
    try:
        origin = subprocess.run([python, "-c", "import importlib.util as u; print(u.find_spec('torch').origin)"],
                                capture_output=True, text=True, timeout=60).stdout.strip()
        with open(os.path.join(os.path.dirname(origin), "version.py")) as f:
            text = f.read()
    except (OSError, subprocess.SubprocessError):
        return True  # unknown: let ComfyUI decide
    def built_for(name):  # "cuda: Optional[str] = '12.8'" vs "= None"
        m = re.search(rf"^{name}\b[^=\n]*=\s*(.+)$", text, re.M)
        return m is not None and m.group(1).strip() != "None"

    return built_for("cuda") or built_for("hip")


def free_port() -> int:
    """A port the OS reports free on 127.0.0.1 (never a fixed range: two runs may share a machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NoTestCheckpoint(RuntimeError):
    """No tiny checkpoint and no harness script to build one."""


def harness_dir() -> str:
    """``COMFY_HARNESS_DIR``, else ``shared/tools/comfy-harness`` next to the repo or next to a folder
    above it (a git worktree may sit deeper than the checkout); the first candidate when none exists."""
    if os.environ.get("COMFY_HARNESS_DIR"):
        return os.environ["COMFY_HARNESS_DIR"]
    d = REPO
    while os.path.dirname(d) != d:
        d = os.path.dirname(d)
        cand = os.path.join(d, "shared", "tools", "comfy-harness")
        if os.path.exists(os.path.join(cand, "make_tiny_ckpt.py")):
            return cand
    return os.path.join(os.path.dirname(REPO), "shared", "tools", "comfy-harness")


def tiny_checkpoint(root: str, py: str, kind: str = "sd15") -> str:
    """Path of a tiny random test checkpoint, built once (cached in ``~/.cache/comfyui-fastdrag``).

    ``kind``: ``sd15`` (the harness's tiny SD1.5: 2 levels, 7 attn1 layers), ``sd15_layout`` (SD1.5's
    4-level UNet layout at 320 channels), ``sd15_dift`` (that UNet with an informative, hand-set VAE
    encoder, for DIFT tracking tests), ``sdxl``, ``sd2v`` (see ``tests/integration/make_test_ckpt.py``);
    all with the TAESD VAE. ``FASTDRAG_TEST_CKPT`` replaces the ``sd15`` one. Building needs the
    comfy-harness's ``make_tiny_ckpt.py`` (``COMFY_HARNESS_DIR``)."""
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
    subprocess.run([py, os.path.join(REPO, "tests", "integration", "make_test_ckpt.py"), harness_dir(), root, kind,
                    tmp], check=True, cwd=root, stdout=subprocess.DEVNULL)
    os.replace(tmp, path)
    return path


def tiny_dit(root: str, py: str, name: str) -> str:
    """Path of the comfy-harness's tiny random DiT ``name`` (``tiny_sd3`` or ``tiny_flux``, for UNETLoader):
    the harness's copy if it made one, else built once into ``~/.cache/comfyui-fastdrag`` with its
    ``make_tiny_dit.py`` (which writes both)."""
    for folder in (CACHE, os.path.join(os.path.dirname(os.path.abspath(root)), "models", "diffusion_models")):
        path = os.path.join(folder, f"{name}.safetensors")
        if os.path.exists(path):
            return path
    script = os.path.join(harness_dir(), "make_tiny_dit.py")
    if not os.path.exists(script):
        raise NoTestCheckpoint(f"no tiny DiT {name}: set COMFY_HARNESS_DIR to the comfy-harness folder with "
                               f"make_tiny_dit.py (not found: {script})")
    os.makedirs(CACHE, exist_ok=True)
    subprocess.run([py, script, CACHE], check=True, cwd=root, stdout=subprocess.DEVNULL)
    return os.path.join(CACHE, f"{name}.safetensors")


def pure_core(name: str):
    """A torch-free module of ``fastdrag_core`` (``dragbench``, ``dragbench_sheet``) loaded from its
    file, without the package's ``__init__`` (which imports torch: seconds a client does not need)."""
    key = f"fastdrag_core_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, os.path.join(REPO, "fastdrag_core", f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


# ---------------------------------------------------------------------------------------- client
class PromptError(Exception):
    """A prompt rejected by validation (``kind='validation'``) or failed while executing
    (``kind='execution'``); names the node."""

    def __init__(self, kind, node_id, node_type, message, data):
        super().__init__(f"{kind} in node {node_id} ({node_type}): {message}")
        self.kind, self.node_id, self.node_type, self.message, self.data = kind, node_id, node_type, message, data


class ComfyClient:
    """ComfyUI's HTTP API at ``url`` (stdlib urllib + json)."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.client_id = uuid.uuid4().hex
        self.queued: set[str] = set()  # ids of the prompts this client queued and has not seen finish

    def _http(self, method, path, data=None, timeout=30, headers=None):
        hdrs = dict(headers or ({"Content-Type": "application/json"} if data else {}))
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                self.last_headers = dict(r.headers)  # of the last 2xx answer (the editor's tests read X-FastDrag-*)
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get(self, path, timeout=30):
        status, body = self._http("GET", path, timeout=timeout)
        if status != 200:
            raise OSError(f"GET {path} -> {status}: {body[:200]!r}")
        return json.loads(body)

    def ready(self) -> bool:
        try:
            self.get("/system_stats", timeout=2)
            return True
        except (OSError, ValueError):
            return False

    def has_node(self, class_type: str) -> bool:
        """Whether the server knows this node class (GET /object_info/<class>: {} when it does not)."""
        return bool(self.get(f"/object_info/{urllib.parse.quote(class_type)}", timeout=60))

    def submit(self, prompt: dict) -> str:
        """Queue an API prompt; return its id. Raises PromptError(kind='validation') on a rejected prompt."""
        status, body = self._http("POST", "/prompt",
                                  json.dumps({"prompt": prompt, "client_id": self.client_id}).encode())
        try:
            resp = json.loads(body)
        except ValueError:
            raise PromptError("validation", None, None, f"HTTP {status}: {body[:300]!r}", None) from None
        if status != 200 or resp.get("node_errors"):
            for nid, ne in (resp.get("node_errors") or {}).items():
                msg = "; ".join(f"{e.get('message')}: {e.get('details')}" for e in ne.get("errors", []))
                raise PromptError("validation", nid, ne.get("class_type"), msg, resp)
            err = resp.get("error")
            msg = f"{err.get('message')}: {err.get('details')}" if isinstance(err, dict) else json.dumps(err)
            raise PromptError("validation", None, None, msg, resp)
        self.queued.add(resp["prompt_id"])
        return resp["prompt_id"]

    def wait(self, pid: str, timeout: float = 900, raise_errors: bool = True) -> dict:
        """Wait for a queued prompt; return its history entry. Raises PromptError(kind='execution')
        on an execution error unless ``raise_errors`` is False. On timeout the prompt is cancelled
        (:meth:`cancel`: that prompt only) and TimeoutError is raised."""
        t0, delay = time.time(), 0.05
        while time.time() - t0 < timeout:
            h = self.get(f"/history/{pid}")
            if pid in h:
                st = h[pid].get("status", {})
                if st.get("completed") or st.get("status_str") == "error":
                    self.queued.discard(pid)
                    for kind, data in st.get("messages", []):
                        if kind == "execution_error" and raise_errors:
                            raise PromptError("execution", data.get("node_id"), data.get("node_type"),
                                              f"{data.get('exception_type')}: {data.get('exception_message')}", data)
                    return h[pid]
            time.sleep(delay)
            delay = min(0.1, delay * 1.3)
        self.cancel(pid)
        raise TimeoutError(f"prompt {pid} not done after {timeout}s (cancelled)")

    def run(self, prompt: dict, timeout: float = 900) -> dict:
        """Queue an API prompt and wait for it (see submit / wait)."""
        return self.wait(self.submit(prompt), timeout)

    def interrupt(self):
        """Interrupt whatever prompt the server is running, whoever queued it (POST /interrupt).
        To stop only this client's work use :meth:`cancel` / :meth:`cancel_queued`."""
        self._http("POST", "/interrupt", b"")

    def cancel(self, pid: str):
        """Stop one prompt, leaving every other prompt on the server alone: removed from the queue
        if it is still waiting (POST /queue ``delete``), interrupted if it is running (POST
        /interrupt with its ``prompt_id``: ComfyUI then interrupts only when that prompt runs)."""
        body = json.dumps({"delete": [pid]}).encode()
        self._http("POST", "/queue", body)
        self._http("POST", "/interrupt", json.dumps({"prompt_id": pid}).encode())
        self.queued.discard(pid)

    def cancel_queued(self):
        """Cancel every prompt this client queued and has not seen finish (e.g. on Ctrl-C)."""
        for pid in sorted(self.queued):
            self.cancel(pid)

    def running(self) -> bool:
        return bool(self.get("/queue").get("queue_running"))

    def upload_image(self, data: bytes, name: str, subfolder: str = "", kind: str = "input") -> str:
        """POST /upload/image (overwrite); returns the name to give LoadImage (``subfolder/name``)."""
        boundary = uuid.uuid4().hex
        parts = []
        for key, value in (("subfolder", subfolder), ("type", kind), ("overwrite", "true")):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                     f'Content-Type: image/png\r\n\r\n'.encode() + data + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        status, body = self._http("POST", "/upload/image", b"".join(parts), timeout=120,
                                  headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if status != 200:
            raise OSError(f"upload of {name} -> {status}: {body[:200]!r}")
        r = json.loads(body)
        return f"{r['subfolder']}/{r['name']}" if r.get("subfolder") else r["name"]

    def view(self, filename: str, subfolder: str = "", kind: str = "output") -> bytes:
        """GET /view: the bytes of an output (or temp/input) file."""
        q = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": kind})
        status, body = self._http("GET", f"/view?{q}", timeout=120)
        if status != 200:
            raise OSError(f"GET /view {filename} -> {status}")
        return body

    @staticmethod
    def texts(entry: dict, node_id: str) -> list[str]:
        """The ``text`` ui values a node sent (PreviewText-style)."""
        return list(entry.get("outputs", {}).get(node_id, {}).get("text", []))

    @staticmethod
    def images(entry: dict, node_id: str) -> list[dict]:
        """The ``images`` ui values (``{"filename", "subfolder", "type"}``) a node sent."""
        return list(entry.get("outputs", {}).get(node_id, {}).get("images", []))

    @staticmethod
    def exec_seconds(entry: dict) -> float:
        """Server-side execution time of a finished prompt (execution_start -> execution_success)."""
        ts = {kind: data.get("timestamp") for kind, data in entry["status"]["messages"]}
        return (ts["execution_success"] - ts["execution_start"]) / 1000.0


# --------------------------------------------------------------------------------------- process
class ComfyProcess(ComfyClient):
    """ComfyUI (``root``'s ``main.py``) started headless in its own run folder with this pack.

    Args:
        root: the ComfyUI checkout.
        port: default a free one.
        python: default :func:`comfy_python`.
        cpu: add ``--cpu``; ``None`` = when the server's torch has no CUDA/ROCm build.
        user_models: make the checkout's ``models/*`` folders visible (extra model paths).
        packs: more ``{folder name: path}`` to link into ``custom_nodes``.
        extra_args: more ``main.py`` arguments.
        env: environment overrides for the server process; ``{base}`` in a value is the run folder.
    """

    def __init__(self, root: str, port: int | None = None, python: str | None = None, cpu: bool | None = None,
                 user_models: bool = True, packs: dict | None = None, extra_args=(), env: dict | None = None,
                 prefix: str = "fastdrag_run_"):
        self.root = root
        self.py = python or comfy_python(root)
        self.port = port or free_port()
        super().__init__(f"http://127.0.0.1:{self.port}")
        self.base = tempfile.mkdtemp(prefix=f"{prefix}{self.port}_")
        for d in ("input", "output", "temp", "user", "custom_nodes", "models/checkpoints", "models/loras",
                  "models/controlnet"):
            os.makedirs(os.path.join(self.base, d), exist_ok=True)
        os.symlink(REPO, os.path.join(self.base, "custom_nodes", PACK_NAME))
        for name, path in (packs or {}).items():
            os.symlink(path, os.path.join(self.base, "custom_nodes", name))
        args = [self.py, "main.py", "--listen", "127.0.0.1", "--port", str(self.port), "--base-directory", self.base,
                "--database-url", f"sqlite:///{self.base}/user/comfyui.db", "--disable-auto-launch",
                "--preview-method", "none"]
        if user_models:
            args += ["--extra-model-paths-config", self._write_model_paths()]
        if cpu or (cpu is None and not torch_has_accelerator(self.py)):
            args.append("--cpu")
        args += list(extra_args)
        self.log_path = os.path.join(self.base, "server.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=root, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **{k: v.format(base=self.base) for k, v in (env or {}).items()}})

    def _write_model_paths(self) -> str:
        lines = ["comfyui_checkout:", f"  base_path: {json.dumps(self.root)}"]
        lines += [f"  {name}: {json.dumps(os.path.join('models', name))}" for name in MODEL_FOLDERS
                  if os.path.isdir(os.path.join(self.root, "models", name))]
        path = os.path.join(self.base, "extra_model_paths.yaml")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def wait_ready(self, timeout: float = 240) -> "ComfyProcess":
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"ComfyUI not ready after {timeout}s:\n{self.log_tail()}")

    def link_checkpoint(self, path: str) -> str:
        """Link a checkpoint file into this run folder's ``models/checkpoints``; returns its name."""
        name = os.path.basename(path)
        link = os.path.join(self.base, "models", "checkpoints", name)
        if not os.path.exists(link):
            os.symlink(os.path.abspath(path), link)
        return name

    def write_input(self, name: str, data: bytes):
        path = os.path.join(self.base, "input", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)

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
        if not self.log.closed:
            self.log.close()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
