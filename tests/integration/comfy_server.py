"""The real-server test fixture: ComfyUI with this pack, the test pack and a tiny checkpoint.

Used by the integration tests and benchmarks/bench_nodes.py. The HTTP client and the process
handling are the pack's shipped stdlib client (``benchmarks/comfy_client.py``); this module adds the
test set-up. Configuration (environment):

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

The server gets its own ``TORCH_HOME`` (``<base>/torch_home``), so a test never reads or writes the
user's torch hub cache.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import comfy_client  # noqa: E402
from comfy_client import (CACHE, PACK_NAME, ComfyProcess, NoTestCheckpoint, PromptError,  # noqa: E402,F401
                          comfy_python, free_port, harness_dir, tiny_checkpoint, tiny_dit)

TESTPACK = os.path.join(HERE, "fastdrag_testpack")
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Workflow.ShowMissingModelsWarning": False,
            "Comfy.Workflow.ShowMissingNodesWarning": False}  # the front end opens on the graph


def find_comfyui() -> tuple[str | None, str]:
    """(ComfyUI root or None, reason)."""
    root, reason = comfy_client.find_comfyui()
    if root is None and not os.environ.get("COMFYUI_ROOT"):
        reason = ("no ComfyUI: set COMFYUI_ROOT to a ComfyUI checkout (and COMFYUI_PYTHON to its python) "
                  "to run the real-server integration tests")
    return root, reason


def server_required() -> bool:
    """True when the real-server and browser tests must run (CI): skipping them is then an error."""
    return os.environ.get("FASTDRAG_REQUIRE_SERVER", "") not in ("", "0")


def skip_or_fail(reason: str):
    """pytest: skip with ``reason``, or fail under FASTDRAG_REQUIRE_SERVER=1 (CI must run the test)."""
    import pytest

    if server_required():
        pytest.fail(f"FASTDRAG_REQUIRE_SERVER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


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


class ComfyServer(ComfyProcess):
    """Start ComfyUI with this pack (+ the test pack) in a temporary base directory; stop it by PID."""

    def __init__(self, root: str, port: int | None = None, extra_args: list[str] | None = None,
                 test_pack: bool = True):
        py = comfy_python(root)
        ckpt = tiny_checkpoint(root, py)  # first: raises NoTestCheckpoint before anything is made
        port = port or free_port()
        super().__init__(root, port=port, python=py, cpu=os.environ.get("FASTDRAG_TEST_DEVICE", "cpu") == "cpu",
                         user_models=False, packs={"fastdrag_testpack": TESTPACK} if test_pack else None,
                         extra_args=extra_args or (), prefix="fastdrag_it_",
                         env={"TORCH_HOME": "{base}/torch_home"})
        self.ckpt_name = self.link_checkpoint(ckpt)
        self.ckpt_names = {"sd15": self.ckpt_name}
        self.write_input("fastdrag_test.png", pattern_png())
        os.makedirs(os.path.join(self.base, "user", "default"), exist_ok=True)
        with open(os.path.join(self.base, "user", "default", "comfy.settings.json"), "w") as f:
            json.dump(SETTINGS, f)

    def add_checkpoint(self, kind: str) -> str:
        """Builds (once) and links the tiny ``kind`` checkpoint into this server; returns its name for
        ``CheckpointLoaderSimple`` (ComfyUI rescans the folder on the next prompt)."""
        if kind not in self.ckpt_names:
            self.ckpt_names[kind] = self.link_checkpoint(tiny_checkpoint(self.root, self.py, kind))
        return self.ckpt_names[kind]

    def add_diffusion_model(self, name: str) -> str:
        """Links the tiny DiT ``name`` (``tiny_sd3`` / ``tiny_flux``, see ``comfy_client.tiny_dit``) into this
        server's ``models/diffusion_models``; returns its name for ``UNETLoader``."""
        path = tiny_dit(self.root, self.py, name)
        link = os.path.join(self.base, "models", "diffusion_models", os.path.basename(path))
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if not os.path.exists(link):
            os.symlink(os.path.abspath(path), link)
        return os.path.basename(path)
