"""The MONAI Label server, started for real in the server's venv (``make server-venv``) on 127.0.0.1 and a free port,
stopped after the tests; and the same model in this process, to compare masks with.

The server's python is ``$NAPARI_MSA_SERVER_PYTHON``, else ``.server-venv/bin/python`` in the repository. Without
it these tests fail (they never skip): run them with ``make test-server``, which builds the venv first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SERVER = REPO / "server"
sys.path.insert(0, str(SERVER))  # export_samples, msa_app's torch-free parts
sys.path.insert(0, str(REPO / "tests"))  # the main suite's real DICOM series builder

from export_samples import export  # noqa: E402
from launch import START_TIMEOUT_S, Server, ServerError, running_server  # noqa: E402
from launch import server_python as _server_python  # noqa: E402
from medical_io_files import write_series  # noqa: E402

os.environ.setdefault("NAPARI_MSA_PRECISION", "fp32")
os.environ.setdefault("NAPARI_MSA_RUNTIME", "torch")
os.environ.setdefault("NAPARI_MSA_PRELOAD", "0")  # widgets connect (or load) when a test says so


@pytest.fixture(autouse=True)
def _own_folders(tmp_path_factory, monkeypatch):
    """Recovery files and encoder graphs of the widget tests go to folders of their own, never the user's."""
    monkeypatch.setenv("NAPARI_MSA_RECOVERY_DIR", str(tmp_path_factory.mktemp("recovery")))
    monkeypatch.setenv("NAPARI_MSA_GRAPH_DIR", str(tmp_path_factory.mktemp("encoder-graphs")))

CONF = {"model": "demo", "device": "cpu", "precision": "fp32", "runtime": "torch", "threads": "1"}


def server_python() -> Path:
    try:
        return _server_python()
    except ServerError as err:
        pytest.fail(str(err))


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


@contextmanager
def started(studies: Path, app_dir: Path, conf: Mapping[str, str] = CONF, **options) -> Iterator[Server]:
    """``launch.running_server`` with its errors as test failures (these tests fail without a server, never skip)."""
    server_python()
    try:
        with running_server(studies, app_dir, conf, timeout_s=START_TIMEOUT_S, **options) as srv:
            yield srv
    except ServerError as err:
        pytest.fail(str(err))


@pytest.fixture(scope="session")
def server(studies, tmp_path_factory):
    with started(studies, tmp_path_factory.mktemp("app")) as srv:
        yield srv


@pytest.fixture(scope="session")
def start_server(studies, tmp_path_factory) -> Callable[..., AbstractContextManager[Server]]:
    """Another server of its own, with extra settings: ``with start_server(env={...}, conf={...}) as srv:``
    (``conf`` is added to CONF; ``env`` holds MONAI Label's ``MONAI_LABEL_*`` settings; ``ready_path``, ``workers``)."""

    def start(conf: Mapping[str, str] | None = None, **options) -> AbstractContextManager[Server]:
        return started(studies, tmp_path_factory.mktemp("app"), {**CONF, **(conf or {})}, **options)

    return start


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
