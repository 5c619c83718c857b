"""``napari-msa segment -b BOXES.csv``: boxes as napari saves a shapes layer, alone or with points.

Every shapes CSV here is written by napari's own shapes writer (the one File > Save Selected Layer
uses), never typed by hand; one GUI test checks that napari's save path gives the same file.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from model_support import blob_volume

from napari_msa import Session
from napari_msa.cli import build_parser, main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAPARI_SHAPES_HEADER_3D = "index,shape-type,vertex-index,axis-0,axis-1,axis-2"


def rectangle(lo, hi, z=None) -> np.ndarray:
    """The 4 vertices napari stores for an axis-aligned rectangle from corner ``lo`` to ``hi`` (on slice z)."""
    (r0, c0), (r1, c1) = lo, hi
    corners = np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], dtype=float)
    return corners if z is None else np.column_stack([np.full(4, float(z)), corners])


def save_shapes(path, shapes, shape_types="rectangle", ndim=None):
    """Write a napari Shapes layer with napari's builtin shapes writer (what File > Save uses for .csv)."""
    from napari.layers import Shapes
    from napari_builtins.io._write import napari_write_shapes

    layer = Shapes(shapes, shape_type=shape_types, ndim=ndim)
    data, meta, _ = layer.as_layer_data_tuple()
    assert napari_write_shapes(str(path), data, meta) == str(path)
    return path


def save_points(path, rows):
    """A points CSV with 'positive' and 'object' columns (napari writes features after the axes)."""
    ndim = len(rows[0]) - 2
    header = ["index", *(f"axis-{i}" for i in range(ndim)), "positive", "object"]
    path.write_text(",".join(header) + "\n" + "".join(
        ",".join(str(v) for v in (i, *row)) + "\n" for i, row in enumerate(rows)))
    return path


def recording_oracle(calls, truth):
    """predict() stand-in: records the prompts; a box gives the labelled object filling most of it,
    points alone the object under the first positive point."""

    def predict(self, points=None, labels=None, box=None, mask_input=None, *, z=None, multimask=None):
        pts = None if points is None else np.asarray(points, dtype=float)
        if pts is not None and pts.shape[1] == 3:
            z = int(round(pts[0, 0]))
        plane = truth[z] if truth.ndim == 3 else truth
        calls.append({"z": z, "points": None if pts is None else pts.tolist(),
                      "labels": None if labels is None else list(labels),
                      "box": None if box is None else np.asarray(box).tolist()})
        if box is not None:
            r0, c0, r1, c1 = np.round(box).astype(int)
            ids, counts = np.unique(plane[r0:r1 + 1, c0:c1 + 1], return_counts=True)
            counts[ids == 0] = 0
            obj = ids[np.argmax(counts)]
        else:
            pos = pts[np.asarray(labels) == 1][0]
            obj = plane[int(round(pos[-2])), int(round(pos[-1]))]
        return (plane == obj) & (obj > 0), 1.0

    return predict


@pytest.fixture
def volume(tmp_path):
    """A (12, 40, 50) volume with three labelled objects: blocks 1 and 2, and a blob (3)."""
    truth = np.zeros((12, 40, 50), np.uint8)
    truth[2:6, 5:15, 5:20] = 1
    truth[6:10, 25:35, 30:45] = 2
    truth[3:9, 20:24, 2:8] = 3
    image = truth.astype(np.float32) + np.random.default_rng(0).normal(0, 0.05, truth.shape).astype(np.float32)
    np.save(tmp_path / "vol.npy", image)
    return truth


def test_boxes_and_points_become_objects(tmp_path, monkeypatch, volume):
    boxes = save_shapes(tmp_path / "boxes.csv", [rectangle((4, 3), (16, 22), z=4),     # object 1
                                                 rectangle((23, 28), (36, 47), z=8)])  # object 2
    assert boxes.read_text().splitlines()[0] == NAPARI_SHAPES_HEADER_3D
    points = save_points(tmp_path / "points.csv", [
        (4, 10, 12, 1, 1),   # refines box 1 on its slice
        (4, 2, 40, 0, 1),    # a negative click of object 1
        (7, 30, 38, 1, 2),   # object 2 on another slice than its box: a prediction of its own
        (5, 22, 5, 1, 7),    # object 7: points only
    ])
    calls = []
    monkeypatch.setattr(Session, "predict", recording_oracle(calls, volume))
    out = tmp_path / "out.tif"
    assert main(["-q", "segment", str(tmp_path / "vol.npy"), "-p", str(points), "-b", str(boxes), "-o", str(out),
                 "--model", "tiny"]) == 0
    assert calls == [
        {"z": 4, "points": [[4, 10, 12], [4, 2, 40]], "labels": [1, 0], "box": [4, 3, 16, 22]},
        {"z": 7, "points": [[7, 30, 38]], "labels": [1], "box": None},
        {"z": 8, "points": None, "labels": None, "box": [23, 28, 36, 47]},
        {"z": 5, "points": [[5, 22, 5]], "labels": [1], "box": None},
    ]
    labels = tifffile.imread(out)
    assert labels.dtype == np.uint16 and labels.shape == volume.shape
    assert np.array_equal(labels[4], np.where(volume[4] == 1, 1, 0))
    assert np.array_equal(labels[8] == 2, volume[8] == 2) and np.array_equal(labels[7] == 2, volume[7] == 2)
    assert np.array_equal(labels[5] == 7, volume[5] == 3) and set(np.unique(labels)) == {0, 1, 2, 7}

    calls.clear()  # boxes alone, propagated like point objects
    assert main(["-q", "segment", str(tmp_path / "vol.npy"), "-b", str(boxes), "-o", str(out), "--model", "tiny",
                 "--propagate"]) == 0
    labels = tifffile.imread(out)
    assert np.array_equal(labels == 1, volume == 1) and np.array_equal(labels == 2, volume == 2)
    assert [c["box"] for c in calls[:2]] == [[4, 3, 16, 22], [23, 28, 36, 47]]


def test_box_2d_with_the_demo_model(tmp_path):
    image, blob = blob_volume(shape=(1, 48, 64), center=(0, 20, 40), radii=(3, 9, 14))
    tifffile.imwrite(tmp_path / "img.tif", image[0])
    rows, cols = np.nonzero(blob[0])
    boxes = save_shapes(tmp_path / "b.csv", [rectangle((rows.min() - 1, cols.min() - 1),
                                                       (rows.max() + 1, cols.max() + 1))])
    assert boxes.read_text().splitlines()[0] == "index,shape-type,vertex-index,axis-0,axis-1"
    assert main(["-q", "segment", str(tmp_path / "img.tif"), "-b", str(boxes), "-o", str(tmp_path / "o.tif"),
                 "--model", "demo"]) == 0
    mask = tifffile.imread(tmp_path / "o.tif") == 1
    assert 2 * (mask & blob[0]).sum() / (mask.sum() + blob[0].sum()) > 0.85


def test_box_volume_propagates_with_the_demo_model(tmp_path):
    image, blob = blob_volume(shape=(9, 48, 64), center=(4, 20, 40), radii=(3, 9, 14))
    np.save(tmp_path / "v.npy", image)
    rows, cols = np.nonzero(blob[4])
    boxes = save_shapes(tmp_path / "b.csv", [rectangle((rows.min() - 1, cols.min() - 1),
                                                       (rows.max() + 1, cols.max() + 1), z=4)])
    assert main(["-q", "segment", str(tmp_path / "v.npy"), "-b", str(boxes), "-o", str(tmp_path / "o.tif"),
                 "--model", "demo", "--propagate", "--iou-threshold", "0.3"]) == 0
    mask = tifffile.imread(tmp_path / "o.tif") == 1
    assert mask[4].any() and mask[3].any() and mask[5].any()  # carried to the neighbouring slices
    assert 2 * (mask & blob).sum() / (mask.sum() + blob.sum()) > 0.8


BAD_SHAPES = {
    "polygon": ([rectangle((1, 1), (5, 5), z=2), np.array([[2, 1, 1], [2, 5, 6], [2, 3, 9]], float)],
                ["rectangle", "polygon"], 3, "line 6: shape 1 is a shape of type 'polygon'; only rectangles are boxes"),
    "ellipse": ([rectangle((1, 1), (5, 5), z=2)], "ellipse", 3, "line 2: shape 0 is a shape of type 'ellipse'"),
    "tilted": ([np.array([[2, 1, 1], [2, 1, 6], [4, 5, 6], [4, 5, 1]], float)], "rectangle", 3,
               "shape 0 spans slices 2-4; a box must lie on one slice"),
    "2d file": ([rectangle((1, 1), (5, 5))], "rectangle", 2, "need columns axis-0, axis-1, axis-2"),
    "off image": ([rectangle((50, 60), (55, 70), z=1)], "rectangle", 3, "lies outside the 20×20 image"),
    "bad slice": ([rectangle((1, 1), (5, 5), z=9)], "rectangle", 3, "lies on slice 9, outside the image's 4"),
}


@pytest.mark.parametrize("case", list(BAD_SHAPES))
def test_bad_boxes_give_one_clear_line(tmp_path, capsys, case):
    shapes, types, ndim, message = BAD_SHAPES[case]
    np.save(tmp_path / "v.npy", np.zeros((4, 20, 20), np.float32))
    save_shapes(tmp_path / "b.csv", shapes, types, ndim=ndim)
    code = main(["-q", "segment", str(tmp_path / "v.npy"), "-b", str(tmp_path / "b.csv"), "-o",
                 str(tmp_path / "o.tif"), "--model", "tiny"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("napari-msa segment: error: b.csv")
    assert message in err[0]
    assert not (tmp_path / "o.tif").exists()


def test_segment_needs_points_or_boxes(tmp_path, capsys):
    np.save(tmp_path / "v.npy", np.zeros((20, 20), np.float32))
    assert main(["-q", "segment", str(tmp_path / "v.npy"), "-o", str(tmp_path / "o.tif"), "--model", "tiny"]) == 2
    assert capsys.readouterr().err.strip() == ("napari-msa segment: error: give prompts: -p POINTS.csv, "
                                               "-b BOXES.csv or both (or --everything)")


def test_a_shapes_file_given_as_points_is_refused(tmp_path, capsys):
    np.save(tmp_path / "v.npy", np.zeros((20, 20), np.float32))
    save_shapes(tmp_path / "b.csv", [rectangle((1, 1), (5, 5))])
    assert main(["-q", "segment", str(tmp_path / "v.npy"), "-p", str(tmp_path / "b.csv"), "-o",
                 str(tmp_path / "o.tif"), "--model", "tiny"]) == 2
    assert "b.csv is a shapes layer (it has a 'shape-type' column); give boxes with -b" in capsys.readouterr().err


def test_3d_shapes_on_a_2d_image_are_refused(tmp_path, capsys):
    np.save(tmp_path / "v.npy", np.zeros((20, 20), np.float32))
    save_shapes(tmp_path / "b.csv", [rectangle((1, 1), (5, 5), z=0)])
    assert main(["-q", "segment", str(tmp_path / "v.npy"), "-b", str(tmp_path / "b.csv"), "-o",
                 str(tmp_path / "o.tif"), "--model", "tiny"]) == 2
    assert "the shapes are 3D (axis-0, axis-1, axis-2) but the image is 2D" in capsys.readouterr().err


@pytest.mark.gui
def test_napari_save_selected_layer_writes_this_format(make_napari_viewer, tmp_path, monkeypatch, volume):
    """napari's own save path (File > Save Selected Layer) gives the file the CLI reads."""
    viewer = make_napari_viewer()
    viewer.add_image(np.load(tmp_path / "vol.npy"))
    layer = viewer.add_shapes([rectangle((4, 3), (16, 22), z=4)], shape_type="rectangle", ndim=3)
    layer.add_rectangles([rectangle((23, 28), (36, 47), z=8)])
    saved = tmp_path / "saved.csv"
    assert layer.save(str(saved)) == [str(saved)]
    text = saved.read_text()
    assert text.splitlines()[0] == NAPARI_SHAPES_HEADER_3D
    assert text == save_shapes(tmp_path / "builtin.csv", layer.data).read_text()
    calls = []
    monkeypatch.setattr(Session, "predict", recording_oracle(calls, volume))
    assert main(["-q", "segment", str(tmp_path / "vol.npy"), "-b", str(saved), "-o", str(tmp_path / "o.tif"),
                 "--model", "tiny"]) == 0
    assert [(c["z"], c["box"]) for c in calls] == [(4, [4, 3, 16, 22]), (8, [23, 28, 36, 47])]


def test_every_model_option_defaults_to_litemedsam_with_its_adapter():
    from napari_msa._cli.arguments import adapter_from_args

    parser = build_parser()
    for argv in (["segment", "i.tif", "-b", "b.csv", "-o", "o.tif"], ["tune", "i.tif", "l.tif", "-o", "a.safetensors"],
                 ["embed", "i.tif", "--cache-dir", "c"]):
        args = parser.parse_args(argv)
        assert args.model == "litemedsam" and adapter_from_args(args) == "auto"
    args = parser.parse_args(["segment", "i.tif", "-b", "b.csv", "-o", "o.tif", "--no-adapter"])
    assert adapter_from_args(args) is None
    args = parser.parse_args(["segment", "i.tif", "-b", "b.csv", "-o", "o.tif", "--adapter", "x.safetensors"])
    assert adapter_from_args(args) == "x.safetensors"
    with pytest.raises(SystemExit):
        parser.parse_args(["segment", "i.tif", "-o", "o.tif", "--adapter", "x.safetensors", "--no-adapter"])
    demo = parser.parse_args(["demo"])  # the demo shows the product: the default model on the real CT slice
    assert (demo.model, demo.sample) == ("litemedsam", "ct")


def test_default_model_segments_a_box(tmp_path, capsys):
    """No --model: LiteMedSAM (+ the shipped click adapter when it is there) on a small 2D image."""
    image = np.zeros((64, 80), np.float32)
    image[20:40, 30:60] = 1.0
    np.save(tmp_path / "img.npy", image)
    boxes = save_shapes(tmp_path / "b.csv", [rectangle((18, 28), (42, 62))])
    assert main(["segment", str(tmp_path / "img.npy"), "-b", str(boxes), "-o", str(tmp_path / "o.tif"),
                 "--device", "cpu"]) == 0
    assert "napari-msa segment: LiteMedSAM + click adapter @ 256px on cpu" in capsys.readouterr().err
    mask = tifffile.imread(tmp_path / "o.tif") == 1
    truth = image > 0
    assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.85


def test_a_2d_object_with_only_negative_points_is_refused_as_in_3d(tmp_path, capsys):
    np.save(tmp_path / "v.npy", np.zeros((20, 20), np.float32))
    (tmp_path / "p.csv").write_text("index,axis-0,axis-1,positive\n0,5,5,0\n")
    assert main(["-q", "segment", str(tmp_path / "v.npy"), "-p", str(tmp_path / "p.csv"), "-o",
                 str(tmp_path / "o.tif"), "--model", "tiny"]) == 2
    assert "object 1 has only negative points" in capsys.readouterr().err
    assert not (tmp_path / "o.tif").exists()


def test_a_points_csv_with_a_byte_order_mark_is_read(tmp_path):
    np.save(tmp_path / "v.npy", np.zeros((20, 20), np.float32))
    (tmp_path / "p.csv").write_bytes("index,axis-0,axis-1\n0,5,5\n".encode("utf-8-sig"))  # as Excel saves it
    assert main(["-q", "segment", str(tmp_path / "v.npy"), "-p", str(tmp_path / "p.csv"), "-o",
                 str(tmp_path / "o.tif"), "--model", "tiny"]) == 0
