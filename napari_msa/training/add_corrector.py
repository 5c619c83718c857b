"""Put a corrector into an adapter file: the change from the file's decoder to a trained corrector's, made small.

``click_adapter --corrector`` trains a whole decoder that answers every interaction step but a lone click's; the
engine keeps only its *change* from the decoder it started from (``engine.network.corrector``), each 2-D weight's
change at rank ``--rank`` (a truncated SVD), the rest in full (fp16). The output is the starting adapter file with
that change added: its own weights (and so its lone clicks) untouched.

    python -m napari_msa.training.add_corrector --adapter napari_msa/models/litemedsam_clicks.safetensors \\
        --trained /tmp/train/runK/K1200.safetensors --rank 32 --out napari_msa/models/litemedsam_clicks.safetensors
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from napari_msa.engine.files.checkpoints import atomic_write
from napari_msa.engine.files.formats import read_adapter
from napari_msa.engine.network.adapters import is_decoder_weight
from napari_msa.engine.network.corrector import PREFIX, CorrectorChange


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def with_corrector(adapter: Path, trained: Path, rank: int, out: Path, note: dict | None = None) -> Path:
    """Write ``adapter`` + the change from its decoder to ``trained``'s at ``rank`` to ``out`` (atomically): the
    start file's tensors and metadata as they are, a corrector it may have had replaced."""
    start, tuned = read_adapter(adapter), read_adapter(trained)
    if start.meta["base_fingerprint"] != tuned.meta["base_fingerprint"]:
        raise SystemExit(f"{trained.name} was trained on other base weights than {adapter.name}")
    before = {k: v for k, v in start.tensors.items() if is_decoder_weight(k)}
    missing = sorted(k for k in tuned.tensors if is_decoder_weight(k) and k not in before)
    if not before or missing:
        raise SystemExit(f"{adapter.name} must hold the decoder {trained.name} was trained from "
                         f"(missing: {missing[:3] or 'every decoder weight'})")
    after = {k: v for k, v in tuned.tensors.items() if k in before}
    meta = {"trained": trained.name, "trained_sha256": sha256_of(trained), "start_sha256": sha256_of(adapter),
            "training": tuned.meta["training"].get("command"), **(note or {})}
    change = CorrectorChange.between(before, after, rank, meta)
    with safe_open(str(adapter), framework="pt") as f:
        metadata = dict(f.metadata())
    tensors = {k: v.contiguous() for k, v in start.tensors.items() if not k.startswith(PREFIX)}
    tensors.update(change.file_tensors())
    metadata["corrector"] = change.meta_json()
    return atomic_write(out, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", type=Path, required=True, help="the adapter file whose decoder answers lone clicks")
    ap.add_argument("--trained", type=Path, required=True, help="click_adapter --corrector's output")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--note", default="{}", help="JSON added to the corrector's metadata (what, data, time)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    note = {**json.loads(args.note), "command": "python -m napari_msa.training.add_corrector "
            + " ".join(sys.argv[1:] if argv is None else argv)}
    out = with_corrector(args.adapter, args.trained, args.rank, args.out, note)
    print("wrote", out, f"{out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
