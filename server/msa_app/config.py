"""The app's settings from MONAI Label's ``--conf key value`` pairs, checked once at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CHOICES = {
    "precision": ("auto", "fp32", "bf16"),
    "runtime": ("auto", "torch", "openvino"),
    "normalize": ("auto", "ct", "percentile", "none"),
}


class ConfigError(ValueError):
    """A ``--conf`` value the app cannot use; the message names the key and the choices."""


@dataclass(frozen=True)
class AppConfig:
    """What ``load_model`` and the sessions get. ``adapter``: a file, 'auto' (the model's shipped adapter) or
    None (none); ``model_dir``: where tuned adapters are kept (MONAI Label's ``<app>/model``)."""

    model: str = "litemedsam"
    checkpoint: str | None = None
    adapter: str | None = "auto"
    device: str = "auto"
    precision: str = "auto"
    runtime: str = "auto"
    normalize: str = "auto"
    cache_dir: str | None = None
    studies_kept: int = 8
    model_dir: str = "model"
    threads: int | None = None  # torch threads per process (None: torch's default)

    @classmethod
    def from_conf(cls, conf: dict[str, str], app_dir: str | Path) -> AppConfig:
        """Parse ``--conf`` (unknown keys are MONAI Label's own and pass through)."""
        get = conf.get
        for key, choices in CHOICES.items():
            if get(key) is not None and get(key) not in choices:
                raise ConfigError(f"--conf {key} {get(key)}: choose one of {', '.join(choices)}")
        adapter = get("adapter", "auto")
        adapter = None if adapter.lower() == "none" else adapter
        if adapter not in (None, "auto") and not Path(adapter).is_file():
            raise ConfigError(f"--conf adapter {adapter}: no such file (or 'auto' for the shipped one, 'none')")
        checkpoint = get("checkpoint")
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise ConfigError(f"--conf checkpoint {checkpoint}: no such file")
        try:
            kept = int(get("studies_kept", "8"))
        except ValueError:
            kept = 0
        if kept < 1:
            raise ConfigError(f"--conf studies_kept {get('studies_kept')}: a whole number >= 1")
        model_dir = Path(get("model_dir", Path(app_dir) / "model"))
        threads = get("threads")
        if threads is not None and (not threads.isdigit() or int(threads) < 1):
            raise ConfigError(f"--conf threads {threads}: a whole number >= 1")
        return cls(model=get("model", "litemedsam"), checkpoint=checkpoint, adapter=adapter,
                   device=get("device", "auto"), precision=get("precision", "auto"), runtime=get("runtime", "auto"),
                   normalize=get("normalize", "auto"), cache_dir=get("cache_dir"), studies_kept=kept,
                   model_dir=str(model_dir), threads=None if threads is None else int(threads))
