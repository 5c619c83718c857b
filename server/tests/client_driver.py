"""Drives a MONAI Label server with monailabel's own ``MONAILabelClient``; runs in the server's venv.

``python client_driver.py URL CALLS.json OUT.json``: CALLS is a list of {"op": "info"} /
{"op": "infer", "model", "image", "params"} / {"op": "next_sample", "strategy"} /
{"op": "save_label", "image", "label", "tag"}; OUT gets one result per call (an infer's label file is kept in
OUT's folder and named there).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from monailabel.client import MONAILabelClient


def main(url: str, calls_path: str, out_path: str) -> None:
    out_dir = Path(out_path).parent
    tmp = tempfile.mkdtemp(prefix="msa-client-")
    client = MONAILabelClient(url, tmpdir=tmp, client_id="driver")
    results = []
    for n, call in enumerate(json.loads(Path(calls_path).read_text())):
        start = time.perf_counter()
        op = call["op"]
        if op == "info":
            result = client.info()
        elif op == "infer":
            label_file, params = client.infer(call["model"], call["image"], call["params"])
            kept = out_dir / f"infer_{n}.nii.gz"
            shutil.move(label_file, kept)
            result = {"file": str(kept), "params": params}
        elif op == "next_sample":
            result = client.next_sample(call.get("strategy", "random"), {})
        elif op == "save_label":
            result = client.save_label(call["image"], call["label"], tag=call.get("tag", ""))
        else:
            raise SystemExit(f"unknown op {op}")
        results.append({"op": op, "result": result, "seconds": time.perf_counter() - start})
    shutil.rmtree(tmp, ignore_errors=True)
    Path(out_path).write_text(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:4])
