"""An annotator's clicks on the phantom, sent to a MONAI Label server as 3D Slicer's MONAI Label extension sends
them; shared by ``server_latency.py`` and ``server_load.py`` so both time the same requests.

A click is ``(i, j, k, positive)``, a voxel index in the exported NIfTI's own order (Slicer's IJK); each request
carries every click of the object so far in Slicer's two lists (``foreground``, ``background``) and ``slice``, as a
multipart ``params`` field with the extension's boundary, on a connection of its own.
"""

from __future__ import annotations

import http.client
import json
import time

import numpy as np

SLICER_BOUNDARY = "----------lImIt_of_THE_fIle_eW_$"  # MONAILabelLib's multipart boundary
ORGANS = {1: "liver", 2: "spleen", 3: "right kidney", 4: "left kidney", 9: "stomach"}
Click = tuple[int, int, int, int]


def clicks_for(label: int, n: int, rng: np.random.Generator) -> tuple[int, list[Click]]:
    """(slice k, [(i, j, k, positive)]): a deep click, then n-1 corrections inside (+) or just outside (-)."""
    from scipy import ndimage

    from napari_msa._sample_data import read_sample

    ref, _ = read_sample("phantom_labels.tif")  # display (z, y, x) = the exported NIfTI's (k, j, i)
    k = int(np.argmax((ref == label).sum(axis=(1, 2))))
    obj = ref[k] == label
    depth = ndimage.distance_transform_edt(obj)
    y, x = np.unravel_index(depth.argmax(), depth.shape)
    out = [(int(x), int(y), k, 1)]
    ring = ndimage.binary_dilation(obj, iterations=4) & ~obj
    for m in range(1, n):
        where = np.argwhere(obj if m % 2 == 0 else ring)
        yy, xx = where[rng.integers(len(where))]
        out.append((int(xx), int(yy), k, 1 if m % 2 == 0 else 0))
    return k, out


class ServerRefused(RuntimeError):
    """The server answered something other than 200; the message has its status and the start of its body."""


def slicer_infer(host: str, port: int, model: str, study: str, params: dict, timeout: float = 300,
                 headers: dict[str, str] | None = None) -> tuple[float, dict]:
    """POST /infer/<model>?image=<study> as the extension does: (seconds to the whole answer, the result's params)."""
    body = (f"--{SLICER_BOUNDARY}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{json.dumps(params)}\r\n"
            f"--{SLICER_BOUNDARY}--\r\n").encode()
    start = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", f"/infer/{model}?image={study}", body=body,
                     headers={"content-type": f"multipart/form-data; boundary={SLICER_BOUNDARY}",
                              "content-length": str(len(body)), **(headers or {})})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    elapsed = time.perf_counter() - start
    if response.status != 200:
        raise ServerRefused(f"{model} on {study}: {response.status} {data[:500]!r}")
    return elapsed, _result_params(response.getheader("content-type", ""), data)


def _result_params(content_type: str, body: bytes) -> dict:
    """The ``params`` part of MONAI Label's multipart answer (the label NIfTI is the other part)."""
    import email
    import email.policy

    msg = email.message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body, policy=email.policy.HTTP)
    for part in msg.iter_parts():
        if part.get_param("name", header="content-disposition") == "params":
            return json.loads(part.get_payload(decode=True))
    return {}


def click_params(label: str, clicks: list[Click], k: int, client_id: str) -> dict:
    """The extension's params for an object's clicks so far on slice ``k``."""
    return {"label": label, "foreground": [list(c[:3]) for c in clicks if c[3] == 1],
            "background": [list(c[:3]) for c in clicks if c[3] == 0], "slice": k, "client_id": client_id}
