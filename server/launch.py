"""Start napari-msa's MONAI Label app in the server's venv on 127.0.0.1 and a free port, and always stop it.

One way to run the server for ``server/tests`` (conftest) and ``benchmarks/server_load.py``, so what the tests check
and what the benchmark times is the same server. Standard library only: it runs in the test's and the benchmark's
python, the server in ``.server-venv`` (``make server-venv``) or ``$NAPARI_MSA_SERVER_PYTHON``.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVER = REPO / "server"
START_TIMEOUT_S = 300  # imports of monai/itk and the model load; ~10-20 s on the 2-core VM when warm
STARTED = "Application startup complete"  # uvicorn's line once a process has loaded the app and serves


class ServerError(RuntimeError):
    """The server's python is missing, or the server exited or stayed silent; the message has its log's tail."""


class Server:
    """A running server: its URL, host and port, its log and app folder."""

    def __init__(self, port: int, log: Path, app_dir: Path) -> None:
        self.host, self.port, self.log, self.app_dir = "127.0.0.1", port, log, app_dir
        self.url = f"http://127.0.0.1:{port}"

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def connection(self, timeout: float = 120) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)


def server_python() -> Path:
    """The venv's python: ``$NAPARI_MSA_SERVER_PYTHON``, else ``.server-venv/bin/python`` in the repository."""
    py = Path(os.environ.get("NAPARI_MSA_SERVER_PYTHON", REPO / ".server-venv" / "bin" / "python"))
    if not py.exists():
        raise ServerError(f"the server's python {py} is missing: run `make server-venv` (or `make test-server`)")
    return py


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_app(app_dir: Path) -> Path:
    """The app copied into ``app_dir``: MONAI Label writes model/, logs/ and tuned adapters into its app folder,
    and a run must not leave them in the repository."""
    app_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(SERVER / "main.py", app_dir / "main.py")
    shutil.copytree(SERVER / "msa_app", app_dir / "msa_app", ignore=shutil.ignore_patterns("__pycache__"),
                    dirs_exist_ok=True)
    return app_dir


def _answers(srv: Server, path: str) -> bool:
    try:
        conn = srv.connection(timeout=5)
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False


@contextmanager
def running_server(studies: Path, app_dir: Path, conf: Mapping[str, str], env: Mapping[str, str] | None = None,
                   workers: int | None = None, ready_path: str = "/info/",
                   timeout_s: float = START_TIMEOUT_S) -> Iterator[Server]:
    """The app (copied into ``app_dir``) serving ``studies``, ready when ``ready_path`` answers 200 (with auth on,
    ``/auth/``: uvicorn serves only once the app has loaded) and, with ``workers``, every worker process has loaded
    the app (so no request waits on a model load); stopped (its whole process group) on exit. ``env`` is added to this
    process's environment: MONAI Label reads its settings (``MONAI_LABEL_*``) from there."""
    py = server_python()
    copy_app(app_dir)
    log = app_dir / "server.log"
    port = free_port()
    cmd = [str(py), "-m", "monailabel.main", "start_server", "--app", str(app_dir), "--studies", str(studies),
           "--host", "127.0.0.1", "--port", str(port)]
    for key, value in conf.items():
        cmd += ["--conf", key, value]
    if workers:
        cmd += ["--workers", str(workers)]
    full_env = dict(os.environ, NAPARI_MSA_GRAPH_DIR=str(app_dir / "graphs"), PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
    srv = Server(port, log, app_dir)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise ServerError(f"the server exited with {proc.returncode} before answering:\n{srv.log_tail()}")
            if time.monotonic() > deadline:
                raise ServerError(f"the server did not answer {ready_path} within {timeout_s} s:\n{srv.log_tail()}")
            started = log.read_text(errors="replace").count(STARTED)
            if started >= (workers or 1) and _answers(srv, ready_path):
                break
            time.sleep(1)
        yield srv
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
