"""benchmarks/comfy_client.py's ComfyClient against a stdlib HTTP server that plays ComfyUI's queue
endpoints: a client stops only the prompts it queued itself (a server may be shared)."""

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import comfy_client  # noqa: E402


class FakeComfy(BaseHTTPRequestHandler):
    """POST /prompt queues ``mine-<n>``; nothing ever finishes; every request is recorded."""

    requests: list = []

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
        self.requests.append(("GET", self.path, None))
        self._reply({"queue_running": [[0, "someone-elses", {}, {}, []]], "queue_pending": []}
                    if self.path == "/queue" else {})

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        data = json.loads(self.rfile.read(n) or b"{}")
        self.requests.append(("POST", self.path, data))
        if self.path == "/prompt":
            self._reply({"prompt_id": f"mine-{sum(r[1] == '/prompt' for r in self.requests)}", "node_errors": {}})
        else:
            self._reply({})


@pytest.fixture
def fake():
    FakeComfy.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeComfy)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield comfy_client.ComfyClient(f"http://127.0.0.1:{httpd.server_address[1]}"), FakeComfy.requests
    httpd.shutdown()
    httpd.server_close()


def test_wait_timeout_cancels_only_its_own_prompt(fake):
    client, requests = fake
    pid = client.submit({"1": {"class_type": "X", "inputs": {}}})
    with pytest.raises(TimeoutError, match=f"prompt {pid} not done"):
        client.wait(pid, timeout=0.3)
    posts = [(path, data) for method, path, data in requests if method == "POST" and path != "/prompt"]
    assert ("/queue", {"delete": [pid]}) in posts          # dropped if still waiting
    assert ("/interrupt", {"prompt_id": pid}) in posts     # interrupted only if it is the one running
    assert all(data for path, data in posts if path == "/interrupt"), "a bare /interrupt stops anyone's prompt"
    assert pid not in client.queued


def test_cancel_queued_stops_every_prompt_of_this_client_and_no_other(fake):
    client, requests = fake
    other = comfy_client.ComfyClient(client.url)
    theirs = other.submit({"1": {"class_type": "X", "inputs": {}}})
    mine = [client.submit({"1": {"class_type": "X", "inputs": {}}}) for _ in range(2)]
    client.cancel_queued()
    interrupted = [data["prompt_id"] for method, path, data in requests if path == "/interrupt"]
    deleted = [p for method, path, data in requests if path == "/queue" and method == "POST" for p in data["delete"]]
    assert sorted(interrupted) == sorted(mine) == sorted(deleted) and theirs not in interrupted
    assert client.queued == set() and other.queued == {theirs}
