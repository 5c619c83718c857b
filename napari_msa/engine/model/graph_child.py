"""A graph's export in a process of its own: ``runtime.export_in_child`` starts it and pipes it the module.

torch.export and OpenVINO's converter hold the GIL for half a second at a time; run in napari's process (after
every tuning, for the new decoder) they froze the window and held clicks up. Here they hold nobody's. The graph is
written where the parent says (a temporary folder it renames into place); the exit status says whether it was.
"""

from __future__ import annotations

import pickle
import sys

import torch

from . import runtime


def main() -> int:
    job = pickle.load(sys.stdin.buffer)  # our parent's own pickle, through a pipe (export_in_child)
    torch.set_num_threads(max(1, int(job["threads"])))
    kind = {cls.__name__: cls for cls in (runtime.OpenVINOEncoder, runtime.OpenVINODecoder)}[job["kind"]]
    args = dict(job["args"])
    image_size = args.pop("image_size")
    example, dynamic = kind(None, image_size, **args)._example()
    graph = runtime.convert_module(job["module"], example, dynamic)
    runtime._openvino().save_model(graph, job["xml"], compress_to_fp16=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
