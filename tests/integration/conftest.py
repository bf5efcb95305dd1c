"""Real-server fixtures of the integration tests. The session server itself (``server``) lives in
tests/conftest.py, shared with the browser tests."""

import os

import pytest


@pytest.fixture
def outdir(server, request):
    d = os.path.join(server.base, "pt", request.node.name.replace("[", "_").replace("]", ""))
    os.makedirs(d, exist_ok=True)
    return d
