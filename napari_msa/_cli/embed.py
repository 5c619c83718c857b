"""``napari-msa embed``: precompute slice embeddings into a disk cache the widget and CLI reuse."""

from __future__ import annotations

import argparse
import sys

from .arguments import (
    add_model_args,
    add_normalization_args,
    check_model_args,
    model_from_args,
    normalization_from_args,
    say,
)
from .errors import CLIError
from .files import check_input, check_output, read_image


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("embed", help="precompute image embeddings into a cache folder",
                       description="Compute every slice's embedding once (e.g. on a GPU machine) and keep it on "
                                   "disk, keyed by the image content and the model weights.")
    p.add_argument("image", help="image: .tif/.tiff/.npy, NIfTI .nii/.nii.gz or DICOM (a file, or a folder "
                                 "holding one series)")
    p.add_argument("--cache-dir", required=True, help="folder for the embedding cache")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help="slices per encoder pass [default: what was measured fastest on the device: 1 on a CPU]")
    add_model_args(p)
    add_normalization_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_msa.engine import Session

    check_input(args.image, "image")
    check_model_args(args)
    check_output(args.cache_dir, inputs=(args.image,), folder=True)
    if args.batch_size is not None and args.batch_size < 1:
        raise CLIError(f"--batch-size must be 1 or more, got {args.batch_size}")
    image = read_image(args.image).data
    session = Session(model_from_args(args), normalization=normalization_from_args(args), cache_dir=args.cache_dir,
                      cache_budget_bytes=64 << 20)
    session.cache.disk_required = True  # the cache on disk is this command's output
    try:
        session.set_image(image)
    except ValueError as err:
        raise CLIError(f"{args.image}: {err}") from err
    with tqdm(total=session.num_slices, desc="embed", unit="slice", file=sys.stderr, disable=args.quiet) as bar:
        session.embed_slices(range(session.num_slices), progress=lambda done, total: bar.update(done - bar.n),
                             batch_size=args.batch_size)
    say(args, f"napari-msa embed: {session.num_slices} slice embeddings in {args.cache_dir}")
    return 0
