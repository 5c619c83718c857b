"""``napari-msa tune``: image + labels files → a tuned adapter (.safetensors), also under torchrun."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .arguments import (
    add_model_args,
    add_normalization_args,
    check_model_args,
    model_from_args,
    normalization_from_args,
)
from .errors import CLIError
from .files import check_input, check_output, read_image_and_labels

if TYPE_CHECKING:
    from napari_msa.engine.tuning.tune_types import TuneSummary


def add_parser(sub) -> argparse.ArgumentParser:
    from napari_msa.engine.tuning.api import TuneConfig
    from napari_msa.engine.tuning.budget import LIGHT_DECODER, STANDARD

    DEFAULTS = TuneConfig()  # noqa: N806 - read like a constant
    p = sub.add_parser(
        "tune", help="tune the adapters on labelled images (few-shot)",
        description="Tune the MSA adapters (optionally the mask decoder) on an image and its labels: every "
                    "labelled slice and object id becomes a training example, prompted with simulated clicks. "
                    "The default model, LiteMedSAM, is tuned on from its shipped click adapter (--no-adapter: from "
                    "plain LiteMedSAM; --adapter FILE: from that adapter). "
                    "Runs under `torchrun --nproc_per_node N` too (one process per GPU, or gloo on the CPU).",
        usage="%(prog)s IMAGE LABELS [IMAGE LABELS ...] -o ADAPTER.safetensors [options]",
    )
    p.add_argument("files", nargs="+", metavar="IMAGE LABELS",
                   help="image (.tif/.tiff/.npy: (Y,X), (Y,X,3), (Z,Y,X); NIfTI .nii/.nii.gz; DICOM file or "
                        "series folder) followed by its labels (integer ids, 0 = background, same shape as the "
                        "image as read: NIfTI labels saved by napari-msa fit their image); more pairs may follow")
    p.add_argument("-o", "--output", required=True, help="adapter file to write (.safetensors)")
    t = p.add_argument_group("training")
    t.add_argument("--train", choices=("decoder", "adapters", "both"), default=None,
                   help="what learns: the mask decoder on embeddings computed once per slice (fastest), the MSA "
                        "adapters in the encoder, or both [decoder; adapters with --last-blocks]")
    t.add_argument("--steps", type=int, default=None,
                   help=f"optimiser steps [auto: about {STANDARD.epochs:g} passes over the labelled objects, "
                        f"{STANDARD.min_steps}-{STANDARD.max_steps} steps; when only the decoder of a light model "
                        f"(the demo model) trains, about {LIGHT_DECODER.epochs:g} passes, "
                        f"{LIGHT_DECODER.min_steps}-{LIGHT_DECODER.max_steps} steps]")
    t.add_argument("--lr", type=float, default=DEFAULTS.lr,
                   help=f"peak AdamW learning rate, after a warm-up, decaying on a cosine [{DEFAULTS.lr:g}]")
    t.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size,
                   help=f"objects of one slice per step and process [auto: {STANDARD.batch_size}; "
                        f"{LIGHT_DECODER.batch_size} when only the decoder of a light model trains]")
    t.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of the labelled objects held out (from every labelled slice) to measure Dice; "
                        "0 turns the held-out check and early stopping off [0.2]")
    t.add_argument("--patience", type=int, default=DEFAULTS.patience,
                   help="stop after this many held-out checks without improvement in the second half of the run; "
                        f"0: never [{DEFAULTS.patience}]")
    t.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same adapter [0]")
    t.add_argument("--train-decoder", action="store_true", help="the same as --train both")
    t.add_argument("--last-blocks", type=int, metavar="K",
                   help="adapters only in the last K encoder blocks (litemedsam: of its 10 attention blocks); the "
                        "frozen blocks before them are computed once per image and cached, so a step is cheaper "
                        "(not with --adapter; tuning from LiteMedSAM's click adapter caches its frozen blocks "
                        "anyway, so --last-blocks there needs --no-adapter unless K matches the adapter's blocks)")
    t.add_argument("--checkpoint-blocks", action="store_true",
                   help="recompute block activations in the backward pass instead of keeping them: much less "
                        "memory (large images, small GPUs), slower steps")
    t.add_argument("--no-augment", action="store_true",
                   help="no flips, rotations or intensity jitter (the default when only the decoder trains)")
    add_model_args(p)
    add_normalization_args(p)
    return p


def _pairs(files: list[str]) -> list[tuple[str, str]]:
    if len(files) % 2:
        raise CLIError(f"give IMAGE LABELS pairs; got {len(files)} file(s): {' '.join(files)}")
    return [(files[i], files[i + 1]) for i in range(0, len(files), 2)]


def _shipped_adapter(args: argparse.Namespace):
    """The adapter ``load_model(adapter='auto')`` would apply (LiteMedSAM's click adapter), or None."""
    from napari_msa.engine.catalog import DEFAULT_ADAPTERS

    if args.no_adapter or args.adapter or args.checkpoint is not None:
        return None
    path = DEFAULT_ADAPTERS.get(args.model)
    return path if path is not None and path.is_file() else None


def _load_model(args: argparse.Namespace):
    if args.last_blocks is None:
        return model_from_args(args)  # with the shipped adapter, tuning starts from it
    from napari_msa.engine import AdapterConfig, CheckpointError, get_config, load_model
    from napari_msa.engine.files.formats import adapter_config_of, read_adapter_metadata

    if args.adapter:
        raise CLIError("--last-blocks builds new adapters; leave out --adapter (its file fixes where adapters sit)")
    try:
        # litemedsam: 10, TinyViT's attention blocks (the ones that hold adapters); demo: known once loaded
        depth = get_config(args.model).depth if args.model != "demo" else None
    except ValueError as err:
        raise CLIError(str(err)) from err
    if args.last_blocks < 1:
        raise CLIError(f"--last-blocks must be at least 1, got {args.last_blocks}")
    if depth is not None and args.last_blocks > depth:
        raise CLIError(f"--last-blocks must be between 1 and the model's {depth} adapter blocks")
    try:
        if depth is None:  # the demo model: its depth is known once loaded
            depth = load_model(args.model, checkpoint=args.checkpoint, adapter=None, device="cpu").config.depth
            if args.last_blocks > depth:
                raise CLIError(f"--last-blocks must be between 1 and the model's {depth} adapter blocks")
        blocks = tuple(range(max(0, depth - args.last_blocks), depth))
        shipped = _shipped_adapter(args)
        if shipped is not None:
            have = adapter_config_of(read_adapter_metadata(shipped)).blocks
            if have is None or tuple(sorted(have)) != blocks:
                where = "every block" if have is None else "blocks " + ", ".join(map(str, sorted(have)))
                raise CLIError(f"--last-blocks {args.last_blocks} would put new adapters in blocks "
                               f"{', '.join(map(str, blocks))}, but the shipped {shipped.name} has them in {where}: "
                               "leave out --last-blocks to tune on from it, or add --no-adapter to start from the "
                               "plain model")
            return load_model(args.model, adapter=shipped, device=args.device, image_size=args.image_size)
        return load_model(args.model, checkpoint=args.checkpoint, adapter=None, device=args.device,
                          image_size=args.image_size, adapter_config=AdapterConfig(blocks=blocks))
    except (CheckpointError, ValueError) as err:
        raise CLIError(str(err)) from err


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def per_label_lines(summary: TuneSummary) -> str:
    """Held-out Dice per label before -> after, so a structure that got worse is seen, not averaged away."""
    lines = ["held-out Dice per label (1 click | box), before -> after:"]
    for label, d in summary.per_label.items():
        worse = "  <- worse" if d.worse() else ""
        lines.append(f"  label {label:>4}: {_fmt(d.click_before)} -> {_fmt(d.click_after)} | "
                     f"{_fmt(d.box_before)} -> {_fmt(d.box_after)}{worse}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from napari_msa.engine.tuning import distributed
    from napari_msa.engine.tuning.api import TuneProgress, tune
    from napari_msa.engine.tuning.held_out import SESSION_CLICKS

    out = Path(args.output)
    if out.suffix != ".safetensors":
        raise CLIError(f"output {out.name}: adapters are written as .safetensors")
    for i, path in enumerate(args.files):
        check_input(path, "labels" if i % 2 else "image")
    check_model_args(args)
    check_output(out, inputs=tuple(args.files))
    if args.steps is not None and args.steps < 1:
        raise CLIError(f"--steps must be at least 1, got {args.steps}")
    if not 0 <= args.val_fraction < 1:
        raise CLIError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if not 0 < args.lr < float("inf"):  # nan too
        raise CLIError(f"--lr {args.lr}: the learning rate is a positive number, e.g. 1e-4")
    if not 0 <= args.seed < 2**63:
        raise CLIError(f"--seed {args.seed}: a seed is a whole number from 0 to 2**63 - 1")
    pairs = [read_image_and_labels(i, lab) for i, lab in _pairs(args.files)]
    for (img_path, lab_path), (_, labels) in zip(_pairs(args.files), pairs, strict=True):
        if labels.dtype.kind not in "iub":
            raise CLIError(f"{lab_path}: labels must be integer ids (0 = background), got {labels.dtype}; "
                           f"is it the image {img_path} instead?")

    info = distributed.init_from_env(args.device)
    try:
        if info.enabled and torch.cuda.is_available() and args.device in ("auto", "cuda"):
            args.device = f"cuda:{info.local_rank}"
        torch.manual_seed(args.seed)  # random-init models and fresh adapters start the same on every run
        model = _load_model(args)
        quiet = getattr(args, "quiet", False) or not info.is_main
        bars = []  # made at the first step, so an error in the labels comes without a bar before it

        def progress(p: TuneProgress) -> None:
            if p.phase not in ("train", "eval"):
                return
            if not bars:
                bars.append(tqdm(total=p.total_steps, desc="tuning", unit="step", disable=quiet, file=sys.stderr))
            bar = bars[0]
            if p.phase == "train":
                bar.update(p.step - bar.n)
                bar.set_postfix(loss=f"{p.loss:.3f}", dice=_fmt(p.val_dice), refresh=False)
            elif p.phase == "eval" and p.val_dice is not None:
                bar.set_postfix(loss="-" if p.loss is None else f"{p.loss:.3f}", dice=_fmt(p.val_dice))

        train = args.train or ("both" if args.train_decoder else "adapters" if args.last_blocks else "decoder")
        try:
            result = tune(
                model, [a for a, _ in pairs], [b for _, b in pairs], steps=args.steps, lr=args.lr,
                train_adapters=train in ("adapters", "both"), train_decoder=train in ("decoder", "both"),
                batch_size=args.batch_size, val_fraction=args.val_fraction, seed=args.seed,
                augment=False if args.no_augment else None, patience=args.patience,
                checkpoint_blocks=args.checkpoint_blocks,
                normalization=normalization_from_args(args), inplace=True, progress=progress,
            )
        except ValueError as err:
            raise CLIError(str(err)) from err
        finally:
            for bar in bars:
                bar.close()
        s = result.summary
        if info.is_main:
            result.save(out)
        if info.is_main and not quiet:
            stop = ", stopped early" if s.stopped == "early_stopping" else ""
            if s.held_out is not None:
                print(per_label_lines(s))
                kept = (" no check beat the starting weights, so the adapter written is the one tuning started "
                        "from;" if not s.tuned else "")
                h = s.held_out
                blend = f"; {s.blend:.0%} of the tuned change kept (it scored as well)" if 0 < s.blend < 1 else ""
                print(f"held-out Dice (1 click) {_fmt(h.click_before)} -> {_fmt(h.click_after)}, "
                      f"box {_fmt(h.box_before)} -> {_fmt(h.box_after)}, "
                      f"{SESSION_CLICKS}-click session {_fmt(h.session_before)} -> {_fmt(h.session_after)} "
                      f"on {s.n_val_objects} held-out object(s); {s.steps_done}/{s.config.steps} steps"
                      f"{stop}{blend} on {s.world_size} process(es);{kept} adapter written to {out}")
            else:
                print(f"no held-out objects (--val-fraction 0), Dice not measured; {s.steps_done} steps; "
                      f"adapter written to {out}")
        if info.enabled:
            torch.distributed.barrier()
    finally:
        distributed.shutdown()
    return 0
