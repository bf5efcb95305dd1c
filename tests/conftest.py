"""The one real ComfyUI server of a test run (this pack + the test pack, tiny random checkpoint),
shared by the integration tests (tests/integration) and the browser tests (tests/browser).

Without ComfyUI (``COMFYUI_ROOT``) the tests that use it are skipped with the reason, except when
``FASTDRAG_REQUIRE_SERVER=1`` (CI): then they error, so CI never passes without running them.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "integration"))

from comfy_server import ComfyServer, NoTestCheckpoint, find_comfyui, server_required, skip_or_fail  # noqa: E402

COMFY_ROOT, COMFY_REASON = find_comfyui()


def pytest_collection_modifyitems(config, items):
    """No ComfyUI: mark every test that needs the server as skipped at collection (one summary line
    per file); under FASTDRAG_REQUIRE_SERVER=1 the fixture fails them instead."""
    if COMFY_ROOT is not None or server_required():
        return
    skip = pytest.mark.skip(reason=COMFY_REASON)
    for item in items:
        if "server" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def server():
    if COMFY_ROOT is None:
        skip_or_fail(COMFY_REASON)
    try:
        srv = ComfyServer(COMFY_ROOT)
    except NoTestCheckpoint as e:
        skip_or_fail(str(e))
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.cleanup()
