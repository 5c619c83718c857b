#!/usr/bin/env bash
# The MONAI Label server's own venv (default .server-venv): pinned monailabel, monai, torch + torchvision
# (server/requirements.txt) resolved together with this package, and the pydicom 3 workaround: a finder for the
# private module pydicom-seg 0.4.1 imports (server/pydicom_compat.py, loaded by a .pth file; see the README).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${SERVER_VENV:-.server-venv}

[ -x "$VENV/bin/python" ] || $PYTHON -m venv "$VENV"
"$VENV/bin/python" -m pip install -q -r server/requirements.txt -e .
site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cp server/pydicom_compat.py "$site/napari_msa_pydicom_compat.py"
echo "import napari_msa_pydicom_compat; napari_msa_pydicom_compat.install()" > "$site/napari_msa_pydicom_compat.pth"
"$VENV/bin/python" -c "import monailabel.datastore.utils.convert, napari_msa, pydicom, torch
from importlib.metadata import version
print('server venv: ok, monailabel', version('monailabel'), 'torch', torch.__version__, 'pydicom', pydicom.__version__)"
