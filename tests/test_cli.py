import subprocess
import sys

import numpy as np
import tifffile
from model_support import blob_volume

from napari_msa import Session
from napari_msa.cli import main


def _oracle(volume_labels):
    """predict() stand-in: the labelled object under the first positive point (deterministic)."""

    def predict(self, points=None, labels=None, box=None, mask_input=None, *, z=None, multimask=None):
        pts = np.asarray(points)
        pos = pts[np.asarray(labels) == 1][0] if labels is not None else pts[0]
        if pts.shape[1] == 3:
            plane = volume_labels[int(round(pos[0]))]
            r, c = pos[1:]
        else:
            plane, (r, c) = volume_labels, pos
        obj = plane[int(round(r)), int(round(c))]
        return (plane == obj) & (obj > 0), 1.0

    return predict


def _write_points(path, rows):
    header = "index,axis-0,axis-1,axis-2,positive,object\n"
    path.write_text(header + "".join(f"{i},{z},{y},{x},{p},{o}\n" for i, (z, y, x, p, o) in enumerate(rows)))


def test_segment_volume_end_to_end(tmp_path, monkeypatch):
    image, blob = blob_volume(shape=(14, 48, 64), center=(7, 20, 40), radii=(5, 9, 14))
    truth = blob.astype(np.uint8)
    truth[2:12, 35:45, 5:15] = 2  # a second object, a box
    tifffile.imwrite(tmp_path / "vol.tif", image)
    _write_points(tmp_path / "pts.csv", [(7, 20, 40, 1, 1), (6, 20, 40, 1, 1), (7, 40, 10, 1, 2)])
    monkeypatch.setattr(Session, "predict", _oracle(truth))

    assert main(["-q", "segment", str(tmp_path / "vol.tif"), "-p", str(tmp_path / "pts.csv"),
                 "-o", str(tmp_path / "out.tif"), "--model", "tiny"]) == 0
    out = tifffile.imread(tmp_path / "out.tif")
    assert out.shape == image.shape
    assert set(np.unique(out[6])) == {0, 1} and set(np.unique(out[7])) == {0, 1, 2}
    assert np.array_equal(out[7] == 1, truth[7] == 1) and not out[3].any()

    assert main(["-q", "segment", str(tmp_path / "vol.tif"), "-p", str(tmp_path / "pts.csv"),
                 "-o", str(tmp_path / "prop.tif"), "--model", "tiny", "--propagate", "--iou-threshold", "0.3"]) == 0
    prop = tifffile.imread(tmp_path / "prop.tif")
    assert (prop == 2).sum() == (truth == 2).sum()  # the box is carried through all its slices
    assert (prop == 1).sum() > (out == 1).sum()


def test_segment_2d_with_negative_point(tmp_path, monkeypatch):
    truth = np.zeros((40, 60), np.uint8)
    truth[10:20, 30:50] = 1
    np.save(tmp_path / "img.npy", truth.astype(np.float32))
    (tmp_path / "p.csv").write_text("index,axis-0,axis-1,positive\n0,15,40,1\n1,2,2,0\n")
    monkeypatch.setattr(Session, "predict", _oracle(truth))
    assert main(["-q", "segment", str(tmp_path / "img.npy"), "-p", str(tmp_path / "p.csv"),
                 "-o", str(tmp_path / "o.tif"), "--model", "tiny"]) == 0
    assert np.array_equal(tifffile.imread(tmp_path / "o.tif"), truth)


def test_console_script_errors_without_traceback(tmp_path):
    np.save(tmp_path / "v.npy", np.zeros((20, 20), np.float32))
    (tmp_path / "p.csv").write_text("index,axis-0,axis-1\n0,5,5\n")
    proc = subprocess.run([sys.executable, "-m", "napari_msa.cli", "segment", str(tmp_path / "v.npy"), "-p",
                           str(tmp_path / "p.csv"), "-o", str(tmp_path / "o.tif"), "--model", "vit_b"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--checkpoint PATH" in proc.stderr and "Traceback" not in proc.stderr


def test_embed_writes_one_file_per_slice(tmp_path):
    np.save(tmp_path / "v.npy", np.random.default_rng(0).random((3, 30, 30)).astype(np.float32))
    assert main(["-q", "embed", str(tmp_path / "v.npy"), "--cache-dir", str(tmp_path / "c"), "--model", "tiny"]) == 0
    assert len(list((tmp_path / "c").rglob("z*.pt"))) == 3
