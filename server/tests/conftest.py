"""The MONAI Label server, started for real in the server's venv (``make server-venv``) on 127.0.0.1 and a free port,
stopped after the tests; and the same model in this process, to compare masks with.

The server's python is ``$NAPARI_MSA_SERVER_PYTHON``, else ``.server-venv/bin/python`` in the repository. Without
it these tests fail (they never skip): run them with ``make test-server``, which builds the venv first.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SERVER = REPO / "server"
sys.path.insert(0, str(SERVER))  # export_samples, msa_app's torch-free parts
sys.path.insert(0, str(REPO / "tests"))  # the main suite's real DICOM series builder

from export_samples import export  # noqa: E402
from medical_io_files import write_series  # noqa: E402

os.environ.setdefault("NAPARI_MSA_PRECISION", "fp32")
os.environ.setdefault("NAPARI_MSA_RUNTIME", "torch")
os.environ.setdefault("NAPARI_MSA_PRELOAD", "0")  # widgets connect (or load) when a test says so


@pytest.fixture(autouse=True)
def _own_folders(tmp_path_factory, monkeypatch):
    """Recovery files and encoder graphs of the widget tests go to folders of their own, never the user's."""
    monkeypatch.setenv("NAPARI_MSA_RECOVERY_DIR", str(tmp_path_factory.mktemp("recovery")))
    monkeypatch.setenv("NAPARI_MSA_GRAPH_DIR", str(tmp_path_factory.mktemp("encoder-graphs")))

START_TIMEOUT_S = 300  # imports of monai/itk and the model load; ~10 s on the 2-core VM when warm
CONF = {"model": "demo", "device": "cpu", "precision": "fp32", "runtime": "torch", "threads": "1"}


def server_python() -> Path:
    py = Path(os.environ.get("NAPARI_MSA_SERVER_PYTHON", REPO / ".server-venv" / "bin" / "python"))
    if not py.exists():
        pytest.fail(f"the server's python {py} is missing: run `make test-server` (it builds .server-venv first)")
    return py


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reoriented(path: Path, codes: tuple[str, str, str], out: Path) -> Path:
    """The same study stored in another voxel order (nibabel's reorientation): a click means the same anatomy."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    img = nib.load(path)
    nib.save(img.as_reoriented(ornt_transform(io_orientation(img.affine), axcodes2ornt(codes))), out)
    return out


@pytest.fixture(scope="session")
def studies(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("studies")
    export(folder)
    reoriented(folder / "phantom_ct.nii.gz", ("R", "P", "I"), folder / "phantom_rpi.nii.gz")
    plain = nib.load(folder / "phantom_ct.nii.gz")  # dark organs on a bright body: the demo model needs tuning
    inverted = nib.Nifti1Image((-np.asanyarray(plain.dataobj)).astype(np.int16), plain.affine, plain.header)
    nib.save(inverted, folder / "phantom_inv.nii.gz")
    write_series(folder / "ct_series", n=6, spacing=3.0, description="abdomen CT")  # a DICOM series folder
    return folder


class Server:
    """A running server: its URL, host and port, its log."""

    def __init__(self, port: int, log: Path, app_dir: Path) -> None:
        self.host, self.port, self.log, self.app_dir = "127.0.0.1", port, log, app_dir
        self.url = f"http://127.0.0.1:{port}"

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def connection(self, timeout: float = 120) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)


@pytest.fixture(scope="session")
def server(studies, tmp_path_factory):
    py = server_python()
    app_dir = tmp_path_factory.mktemp("app")
    shutil.copy(SERVER / "main.py", app_dir / "main.py")
    shutil.copytree(SERVER / "msa_app", app_dir / "msa_app", ignore=shutil.ignore_patterns("__pycache__"))
    log = app_dir / "server.log"
    port = free_port()
    cmd = [str(py), "-m", "monailabel.main", "start_server", "--app", str(app_dir), "--studies", str(studies),
           "--host", "127.0.0.1", "--port", str(port)]
    for key, value in CONF.items():
        cmd += ["--conf", key, value]
    env = dict(os.environ, NAPARI_MSA_GRAPH_DIR=str(app_dir / "graphs"), PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    srv = Server(port, log, app_dir)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode} before answering:\n{srv.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer /info/ within {START_TIMEOUT_S} s:\n{srv.log_tail()}")
            try:
                conn = srv.connection(timeout=5)
                conn.request("GET", "/info/")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
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


@pytest.fixture(scope="session")
def local_model():
    """The server's model, in this process (one torch thread, as the server's)."""
    import torch

    from napari_msa import load_model

    torch.set_num_threads(int(CONF["threads"]))
    return load_model(CONF["model"], device=CONF["device"], precision=CONF["precision"], runtime=CONF["runtime"])


@pytest.fixture
def run_client(server, tmp_path):
    """Runs monailabel's MONAILabelClient in the server's venv on a list of calls; returns their results."""

    def run(calls: list[dict]) -> list[dict]:
        (tmp_path / "calls.json").write_text(json.dumps(calls))
        out = tmp_path / "out.json"
        done = subprocess.run([str(server_python()), str(Path(__file__).with_name("client_driver.py")), server.url,
                               str(tmp_path / "calls.json"), str(out)], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{done.stderr[-3000:]}\n--- server log ---\n{server.log_tail()}"
        return json.loads(out.read_text())

    return run
