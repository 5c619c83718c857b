#!/usr/bin/env bash
# Installs what a fresh machine lacks: X/Qt libraries for napari (and Xvfb for headless runs),
# a CPU-capable torch + torchvision pair that segment_anything can import, and this package.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

SYSTEM_PACKAGES="xvfb xauth libgl1 libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0
  libxcb-cursor0 libxcb-shape0 libxcb-randr0 libxcb-render-util0 libxcb-image0 libdbus-1-3 libfontconfig1"
missing=""
for p in $SYSTEM_PACKAGES; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "install: apt packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "install: please install these system packages (needs root):$missing" >&2
  fi
fi

# segment_anything imports torchvision at import time; this pair is known to work together here
# (torch 2.13 + PyPI torchvision 0.28 does not: 'operator torchvision::nms does not exist').
$PYTHON -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
$PYTHON -m pip install -q -e ".[qt,test]"
$PYTHON -c "import segment_anything, torch, napari, napari_msa; print('install: ok, torch', torch.__version__)"
