"""Embedding caches keyed by content (never by a path) and images with NaN/Inf pixels (issue 10, items 1–2)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from napari_msa import Normalization, Session, load_model
from napari_msa.engine.network.preprocessing import intensity_window, to_uint8_rgb


@pytest.fixture()
def adapted(tmp_path):
    """A tiny model and two different adapter files saved for it."""
    torch.manual_seed(0)
    model = load_model("tiny", device="cpu")
    paths = []
    for seed in (1, 2):
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed)
            for name, p in model.sam.named_parameters():
                if "Adapter" in name:
                    p.copy_(0.05 * torch.randn(p.shape, generator=g))
        model.version += 1
        paths.append(model.save_adapter(tmp_path / f"adapter{seed}.safetensors"))
    return model, paths


def image() -> np.ndarray:
    return np.random.default_rng(0).normal(100, 20, (48, 48)).astype(np.float32)


def test_an_adapter_replaced_under_the_same_name_never_reuses_old_embeddings(adapted, tmp_path):
    model, (first, second) = adapted
    target = tmp_path / "adapter.safetensors"
    shutil.copy(first, target)
    model.apply_adapter(target)
    cache = tmp_path / "cache"
    a = Session(model, cache_dir=cache)
    a.set_image(image())
    old = a.embedding(0).features.clone()
    shutil.copy(second, target)  # the user overwrites the adapter file
    model.apply_adapter(target)
    b = Session(model, cache_dir=cache)
    b.set_image(image())
    new = b.embedding(0).features
    with torch.no_grad():
        fresh = model.encode(model.preprocess(b.plane_rgb(0))[0])
    assert not torch.equal(old, new)
    torch.testing.assert_close(new, fresh)


def test_the_weights_key_holds_no_path(adapted, tmp_path):
    model, (first, _) = adapted
    evil = tmp_path / "a" / ".." / ".." / "x.safetensors"
    evil.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(first, evil)
    model.apply_adapter(evil)
    key = model.weights_key()
    assert "/" not in key and ".." not in key and "\\" not in key


def test_a_truncated_cache_file_is_recomputed_with_a_warning(tmp_path):
    model = load_model("tiny", device="cpu")
    session = Session(model, cache_dir=tmp_path)
    session.set_image(image())
    good = session.embedding(0).features.clone()
    (path,) = list(tmp_path.rglob("z00000.pt"))
    path.write_bytes(path.read_bytes()[:100])
    again = Session(model, cache_dir=tmp_path)
    again.set_image(image())
    with pytest.warns(RuntimeWarning, match="unreadable"):
        features = again.embedding(0).features
    torch.testing.assert_close(features, good)
    assert path.stat().st_size > 100  # rewritten whole


def test_nan_and_inf_pixels_do_not_change_the_window_or_blacken_the_image():
    clean = image()
    dirty = clean.copy()
    dirty[3, 4], dirty[10, 10], dirty[20, 7] = np.nan, np.inf, -np.inf
    norm = Normalization("percentile")
    lo, hi = intensity_window(dirty, norm, rgb=False)
    assert np.isfinite([lo, hi]).all()
    np.testing.assert_allclose((lo, hi), intensity_window(clean, norm, rgb=False), rtol=0.01)
    plane = to_uint8_rgb(dirty, (lo, hi))
    assert plane[3, 4, 0] == 0 and plane[10, 10, 0] == 0
    assert plane.mean() > 50  # not black


def test_a_nan_image_is_segmented_like_the_clean_one_and_warned_about():
    model = load_model("tiny", device="cpu")
    clean = image()
    dirty = clean.copy()
    dirty[0, 0] = np.nan
    s_clean, s_dirty = Session(model), Session(model)
    s_clean.set_image(clean)
    with pytest.warns(RuntimeWarning, match="1 non-finite pixels"):
        s_dirty.set_image(dirty)
    m_clean, _ = s_clean.predict(points=[(24, 24)], labels=[1])
    m_dirty, _ = s_dirty.predict(points=[(24, 24)], labels=[1])
    assert (m_clean != m_dirty).mean() < 0.02


def test_an_all_nan_image_and_a_nan_window_are_refused():
    with pytest.raises(ValueError, match="no finite pixel values"):
        intensity_window(np.full((8, 8), np.nan, np.float32), Normalization("percentile"), rgb=False)
    with pytest.raises(ValueError, match="finite level and a positive width"):
        Normalization("ct", width=float("nan"))
    with pytest.raises(ValueError, match="finite limits"):
        Normalization("limits", limits=(0.0, float("inf")))


def test_non_finite_prompts_are_refused():
    session = Session(load_model("tiny", device="cpu"))
    session.set_image(image())
    with pytest.raises(ValueError, match="finite"):
        session.predict(points=[(np.nan, 3.0)], labels=[1])
    with pytest.raises(ValueError, match="4 finite numbers"):
        session.predict(box=(1.0, 2.0, np.inf, 9.0))


def test_one_array_read_as_rgb_and_as_a_volume_never_shares_an_embedding(tiny_model, tmp_path):
    """(40, 48, 3) floats: an RGB plane, or 40 slices of 48 × 3. The cache key holds how the axes are read, in
    memory and on disk, so slice 0 of the volume is never answered with the RGB plane's embedding."""
    from napari_msa import Session

    data = np.random.default_rng(0).random((40, 48, 3), dtype=np.float32)
    session = Session(tiny_model, cache_dir=tmp_path / "cache")
    session.set_image(data, rgb=True)
    rgb_hash = session.image_hash
    session.embedding(0)
    session.set_image(data, rgb=False)
    assert session.image_hash != rgb_hash
    mask, _ = session.predict(points=[[0, 20, 1]], labels=[1])
    assert mask.shape == (48, 3)
    fresh = Session(tiny_model, cache_dir=tmp_path / "cache")  # through the disk cache too
    fresh.set_image(data, rgb=False)
    assert fresh.image_hash == session.image_hash != rgb_hash


def test_a_cache_folder_that_cannot_be_written_degrades_to_memory_with_one_warning(tiny_model, tmp_path,
                                                                                   monkeypatch):
    """A full disk (or read-only folder) while the widget or segment keep embeddings: predictions go on, in
    memory, with one warning; for napari-msa embed, whose output the cache is, it is an error."""
    import errno
    import warnings

    from napari_msa import Session
    from napari_msa.engine.inference import session as session_module

    def full_disk(path, write):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(session_module, "atomic_write", full_disk)
    session = Session(tiny_model, cache_dir=tmp_path / "cache")
    session.set_image(np.random.default_rng(0).random((3, 32, 32), dtype=np.float32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for z in range(3):
            session.predict(points=[[z, 10, 10]], labels=[1])  # answered all the same
    messages = [str(w.message) for w in caught if "cannot be written" in str(w.message)]
    assert len(messages) == 1 and "kept in memory only" in messages[0] and "disk is full" in messages[0]
    assert len(session.cache) == 3
    session.cache.disk_required = True
    session.cache.clear()
    with pytest.raises(OSError, match="choose another --cache-dir"):
        session.embedding(0)


def test_a_link_planted_in_the_cache_never_leads_a_write_outside(tiny_model, tmp_path):
    """A link in place of a cache file is dropped (not written through); a link in place of a cache folder is
    refused with a warning: nothing is written outside the cache folder."""
    import warnings

    from napari_msa import Session

    session = Session(tiny_model, cache_dir=tmp_path / "cache")
    session.set_image(np.random.default_rng(0).random((3, 32, 32), dtype=np.float32))
    session.embedding(0)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    as_file = session.cache._disk_path(session._key(1))
    as_file.symlink_to(victim)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        session.embedding(1)
    assert victim.read_text() == "precious" and as_file.is_file() and not as_file.is_symlink()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder = as_file.parent
    shutil.rmtree(folder)
    folder.symlink_to(elsewhere, target_is_directory=True)
    session.cache.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session.embedding(2)
    assert not any(elsewhere.iterdir())
    assert any("leads outside the cache folder" in str(w.message) for w in caught)
