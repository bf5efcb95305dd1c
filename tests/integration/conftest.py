"""Real-server fixtures: one ComfyUI server (with this pack and the test pack) for the whole run.

Skipped, with the reason printed, when no ComfyUI is found (see comfy_server.find_comfyui).
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from comfy_server import ComfyServer, NoTestCheckpoint, find_comfyui  # noqa: E402

ROOT, REASON = find_comfyui()


def pytest_collection_modifyitems(config, items):
    if ROOT is None:
        skip = pytest.mark.skip(reason=REASON)
        for item in items:
            if "integration" in str(item.fspath):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def server():
    if ROOT is None:
        pytest.skip(REASON)
    try:
        srv = ComfyServer(ROOT)
    except NoTestCheckpoint as e:
        pytest.skip(str(e))
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.cleanup()


@pytest.fixture
def outdir(server, request):
    d = os.path.join(server.base, "pt", request.node.name.replace("[", "_").replace("]", ""))
    os.makedirs(d, exist_ok=True)
    return d
