"""``napari-msa demo [--screenshot out.png]``: napari with a sample, both widgets and the default model at work."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from napari_msa._cli.errors import CLIError
from napari_msa._cli.files import check_output

XVFB_SCREEN = "-screen 0 1920x1080x24"  # xvfb-run's default screen is 640x480x8: too small and 8-bit
CHILD_FLAG = "NAPARI_MSA_DEMO_UNDER_XVFB"  # set in the re-executed child, so it never re-executes again


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo",
        help="open napari with a real CT slice, the Segment and Tune widgets and the default model at work",
        description="Open napari with the real CT slice sample (pydicom's CT_small, its reference masks hidden), the "
                    "Segment (MSA) and Tune (MSA) widgets docked as tabs, the default model (LiteMedSAM with "
                    "napari-msa's click adapter) loaded and a few example clicks made. Nothing is downloaded. "
                    "--sample phantom opens the synthetic abdominal phantom, --model demo the small model trained on "
                    "phantoms.",
    )
    p.add_argument("--model", choices=("litemedsam", "demo"), default="litemedsam",
                   help="litemedsam (default: the plugin's default model) or demo (small, trained on phantoms)")
    p.add_argument("--sample", choices=("ct", "phantom"), default="ct",
                   help="ct (default: a real CT slice) or phantom (the synthetic abdominal CT volume)")
    p.add_argument("--screenshot", metavar="PNG",
                   help="render the demo window to this PNG and exit; without a display it runs under Xvfb")
    p.add_argument("--timeout", type=float, default=180.0,
                   help="seconds to wait for each example click's mask before giving up [180]")
    return p


def _has_display() -> bool:
    if not sys.platform.startswith("linux"):
        return True  # macOS and Windows draw without an X server
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _rerun_under_xvfb(args: argparse.Namespace) -> int | None:
    """Run this same command under ``xvfb-run``; None when xvfb-run is not installed."""
    xvfb_run = shutil.which("xvfb-run")
    if xvfb_run is None:
        return None
    cmd = [xvfb_run, "-a", "-s", XVFB_SCREEN, sys.executable, "-m", "napari_msa.cli", "demo",
           "--screenshot", str(Path(args.screenshot).resolve()), "--timeout", str(args.timeout),
           "--model", args.model, "--sample", args.sample]
    env = {**os.environ, CHILD_FLAG: "1", "QT_QPA_PLATFORM": "xcb"}
    return subprocess.run(cmd, env=env).returncode


def _run_in_virtual_display(args: argparse.Namespace) -> int | None:
    """Start Xvfb in-process with pyvirtualdisplay when it is installed; None otherwise."""
    try:
        from pyvirtualdisplay import Display
    except ImportError:
        return None
    with Display(visible=False, size=(1920, 1080), color_depth=24):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from napari_msa._demo import DemoError, run_demo

    try:
        return run_demo(args.screenshot, model=args.model, sample=args.sample, timeout_s=args.timeout)
    except DemoError as err:
        raise CLIError(str(err)) from err


def run(args: argparse.Namespace) -> int:
    if args.screenshot is not None:
        out = Path(args.screenshot)
        if out.suffix.lower() != ".png":
            raise CLIError(f"--screenshot {out.name}: the screenshot is written as .png")
        if not out.resolve().parent.is_dir():
            raise CLIError(f"--screenshot: folder {out.resolve().parent} does not exist")
        check_output(out)  # a folder of that name, a read-only file: refused before napari starts
    if _has_display():
        return _run(args)
    if args.screenshot is None:
        raise CLIError("no display to open napari on; use --screenshot out.png to render the demo under Xvfb")
    if os.environ.get(CHILD_FLAG):
        raise CLIError("Xvfb started but no display was set; check the Xvfb installation")
    for attempt in (_rerun_under_xvfb, _run_in_virtual_display):
        code = attempt(args)
        if code is not None:
            return code
    raise CLIError("no display and no Xvfb: install it (e.g. apt-get install xvfb) or run on a desktop")
