"""The server client's failures, each one clear message, over real sockets on 127.0.0.1: nothing listening, a server
that never answers, a refused token, a server that is not napari-msa's app, a bad address. (The client against the
real MONAI Label server: server/tests/test_napari_client.py, run by `make test-server`.)"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from napari_msa.remote import LabelServer, ServerError, connect


class Answering(BaseHTTPRequestHandler):
    """Answers every request with the class's status and JSON body, and records the Authorization header."""

    status = 200
    body: dict = {}
    seen: list = []

    def _answer(self) -> None:
        type(self).seen.append((self.command, self.path, self.headers.get("Authorization")))
        data = json.dumps(self.body).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_server():
    servers = []

    def start(status: int, body: dict):
        handler = type("Handler", (Answering,), {"status": status, "body": body, "seen": []})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}", handler

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nothing_listening_says_start_the_server():
    with pytest.raises(ServerError, match=r"connection refused\): is it running\? Start it \(`make server`\)"):
        connect(f"http://127.0.0.1:{free_port()}")


def test_a_server_that_never_answers_is_a_timeout_not_a_hang():
    with socket.socket() as listening:  # accepts connections (the kernel's backlog) and never answers
        listening.bind(("127.0.0.1", 0))
        listening.listen(4)
        url = f"http://127.0.0.1:{listening.getsockname()[1]}"
        with pytest.raises(ServerError, match=r"did not answer within 0.5 s"):
            LabelServer(url, timeout=0.5).info()


def test_a_refused_token_names_the_token_field_and_the_token_is_sent(http_server):
    url, handler = http_server(401, {"detail": "Not authenticated"})
    with pytest.raises(ServerError, match=r"refused the request \(401\): it needs a valid token") as err:
        connect(url)
    assert err.value.status == 401
    with pytest.raises(ServerError, match="another token"):
        connect(url, token="s3cret")
    assert handler.seen[-1] == ("GET", "/info/", "Bearer s3cret")
    assert handler.seen[0][2] is None  # no token given: no header


def test_a_server_without_napari_msas_tasks_is_refused(http_server):
    url, _ = http_server(200, {"name": "radiology", "models": {"deepedit": {"type": "deepedit"}}})
    with pytest.raises(ServerError, match=r"does not serve napari-msa's tasks \(msa_2d, msa_3d missing\)"):
        connect(url)


def test_an_app_refusal_is_its_own_reason(http_server):
    url, _ = http_server(400, {"detail": "slice 40 is outside the study's 32 slices (k = 0..31)"})
    with pytest.raises(ServerError, match=r"answered 400: slice 40 is outside") as err:
        LabelServer(url).infer("msa_2d", "abc", {"clicks": []})
    assert err.value.status == 400


def test_the_connected_model_names_the_server(http_server):
    url, _ = http_server(200, {"name": "napari-msa", "version": "0.3", "models": {"msa_2d": {}, "msa_3d": {}}})
    model = connect(url + "/")
    assert model.remote and model.source == url
    assert url in model.describe() and "napari-msa" in model.describe()


@pytest.mark.parametrize("url, says", [("ftp://host:21", "not a server address"), ("http://host:port", "bad port"),
                                       ("http://", "not a server address")])
def test_a_bad_address_is_refused_before_any_request(url, says):
    with pytest.raises(ServerError, match=says):
        LabelServer(url)


def test_a_bare_host_and_port_means_http():
    assert LabelServer("127.0.0.1:8000").url == "http://127.0.0.1:8000"
