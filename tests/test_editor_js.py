"""Runs the editor's JavaScript unit tests (tests/js/*.test.mjs, node's built-in runner) when
node >= 18 is installed; skipped otherwise, failed under FASTDRAG_REQUIRE_SERVER=1 (CI)."""

import glob
import os
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
NODE = shutil.which("node")


def test_editor_model_js():
    if NODE is None:
        from comfy_server import skip_or_fail
        skip_or_fail("node is not installed (the editor's JS unit tests need node >= 18: apt-get install nodejs)")
    files = sorted(glob.glob(os.path.join(HERE, "js", "*.test.mjs")))
    assert files
    proc = subprocess.run([NODE, "--test", *files], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
