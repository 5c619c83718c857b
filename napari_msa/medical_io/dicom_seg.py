"""Labels of a DICOM series as a DICOM Segmentation (SEG) object, and SEG files read back as labels (highdicom).

Writing: the labels layer (display order) goes back to the series' own voxel order through its geometry, so each
frame lies on the slice file it was drawn on; every label id becomes one segment (numbered 1, 2, … as the standard
asks, the id kept as the segment's tracking id and label), binary frames, empty frames left out. The SEG refers to
the source series (study, frame of reference, each source instance), so PACS viewers, 3D Slicer and OHIF overlay it.
Reading: the segments as one labels volume on the SEG's own grid (its frames' positions), placed in the patient
frame like every volume napari-msa reads, with the original ids where the file keeps them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .geometry import Geometry, MedicalIOError
from .image import MedicalImage, smallest_int_dtype

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def is_dicom_seg_name(path: str | Path) -> bool:
    return str(path).lower().endswith((".dcm", ".dicom"))


def write_dicom_seg(path: str | Path, labels: np.ndarray, geometry: Geometry,
                    names: dict[int, str] | None = None) -> Path:
    """Write ``labels`` (display order, on ``geometry``'s grid) as a DICOM SEG referring to the source series."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from napari_msa import __version__
    from napari_msa.engine.files.checkpoints import atomic_write  # writing a file: the engine's atomic write

    files = geometry.info.get("source_files") if geometry.fmt == "dicom" else None
    if not files:
        raise MedicalIOError("DICOM SEG is written for labels drawn on a DICOM series of single-frame files opened "
                             "with napari-msa's reader; save these labels as NIfTI (.nii.gz)")
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise MedicalIOError(f"the source series' file {missing[0]} is gone; DICOM SEG refers to every source file "
                             "(save as NIfTI, or open the series again)")
    source = geometry.to_source(np.asarray(labels), spatial_only=True)  # (column, row, slice)
    frames = np.ascontiguousarray(np.swapaxes(source[..., 0] if source.ndim == 4 else source, 0, 2))
    ids = [int(v) for v in np.unique(frames) if v > 0]
    if not ids:
        raise MedicalIOError("the labels are empty: there is no object to save")
    if int(frames.min()) < 0:
        raise MedicalIOError("labels must be positive integers to be saved as DICOM SEG")
    lut = np.zeros(max(ids) + 1, dtype=np.uint16 if len(ids) > 255 else np.uint8)
    lut[ids] = np.arange(1, len(ids) + 1)
    segments = lut[frames.astype(np.int64)]
    names = names or {}
    algorithm = hd.AlgorithmIdentificationSequence(name="napari-msa", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=k, segment_label=str(names.get(obj, f"object {obj}"))[:64],
        segmented_property_category=codes.SCT.Tissue, segmented_property_type=codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC, algorithm_identification=algorithm,
        tracking_id=str(obj), tracking_uid=hd.UID()) for k, obj in enumerate(ids, start=1)]
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=segments, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9000,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="napari-msa",
        manufacturer_model_name="napari-msa", software_versions=__version__, device_serial_number="none",
        content_label="NAPARI_MSA", omit_empty_frames=True)
    # The spacing the slices really have: highdicom copies the source's SliceThickness, which differs from the
    # spacing in overlapping reconstructions, and readers then find the frames irregularly spaced.
    for group in seg.SharedFunctionalGroupsSequence:
        for measures in group.get("PixelMeasuresSequence", []):
            measures.SpacingBetweenSlices = float(np.linalg.norm(geometry.affine[:3, 2]))
    return atomic_write(path, lambda tmp: seg.save_as(tmp))


def is_dicom_seg(ds) -> bool:
    return str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS or str(ds.get("Modality", "")).upper() == "SEG"


def read_dicom_seg(path: str | Path) -> MedicalImage:
    """A SEG file as one labels volume (display order) on its own grid, ids from its tracking ids."""
    import highdicom as hd

    path = Path(path)
    try:
        seg = hd.seg.segread(path)
        volume = seg.get_volume(combine_segments=True, relabel=False)
    except (ValueError, RuntimeError, AttributeError) as err:
        raise MedicalIOError(f"{path.name}: cannot read this DICOM SEG ({err})") from err
    numbers = np.asarray(volume.array).astype(np.int64)  # (slice, row, column) of segment numbers
    ids = np.arange(int(numbers.max()) + 1)
    for number in seg.segment_numbers:
        tracking = seg.get_segment_description(number).tracking_id
        if tracking is not None and str(tracking).isdigit():
            ids[number] = int(tracking)
    labels = ids[numbers]
    labels = labels.astype(smallest_int_dtype(0, int(labels.max(initial=0))))
    # highdicom: (slice, row, column) index -> LPS mm; ours: (column, row, slice) -> RAS mm
    swap = np.zeros((4, 4))
    swap[0, 2] = swap[1, 1] = swap[2, 0] = swap[3, 3] = 1.0
    affine = LPS_TO_RAS @ np.asarray(volume.affine, dtype=np.float64) @ swap
    source = np.swapaxes(labels, 0, 2)
    info = {"Modality": "SEG", "SeriesDescription": str(seg.get("SeriesDescription", "") or ""),
            "SeriesInstanceUID": str(seg.SeriesInstanceUID)}
    geometry = Geometry(affine=affine, source_shape=source.shape, fmt="dicom", info=info)
    name = f"{path.stem} (SEG)"
    return MedicalImage(data=geometry.to_display(source), geometry=geometry, name=name, is_labels=True)
