"""The bundles' dataset (:class:`monai_liver.engine.preprocessed_cache.PreprocessedCacheDataset`): the
deterministic preprocessing is written once to disk and read by the next run, the items are those of a
plain ``CacheDataset``, and a chain with other settings gets its own folder."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from conftest import tiny_lesion_datalist

from monai_liver.engine.data import slice_items
from monai_liver.engine.preprocessed_cache import PreprocessedCacheDataset, persistable_head, transform_fingerprint
from monai_liver.transforms import cached_on_device, eval_transforms, train_transforms


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    d = tmp_path_factory.mktemp("prep")
    datalist = tiny_lesion_datalist(d)
    return slice_items(datalist, d / "data", 0, "train", d / "slices")


def _same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        if isinstance(a[k], (torch.Tensor, np.ndarray)):
            x, y = torch.as_tensor(a[k]), torch.as_tensor(b[k])
            assert type(b[k]) is torch.Tensor and x.dtype == y.dtype and torch.equal(x, y), k  # as stored on disk
        else:
            assert a[k] == b[k], k


def test_items_as_a_cache_dataset_and_read_back_from_disk(items, tmp_path):
    from monai.data import CacheDataset

    chain = train_transforms("joint", image_size=32, augment=False)
    plain = CacheDataset(items, transform=chain, cache_rate=1.0, progress=False)
    first = PreprocessedCacheDataset(items, transform=chain, persist_dir=tmp_path, cache_rate=1.0, progress=False)
    folder = first.persist_dir
    assert folder is not None and folder.parent == tmp_path / "prep"
    written = {p: p.stat().st_mtime_ns for p in folder.glob("*.pt")}
    assert len(written) == len({it["image"] for it in items}) > 0  # one file per distinct slice
    for i in range(len(items)):
        _same(plain[i], first[i])

    # a slice twice in one list (lesion oversampling): computed once, read back once, one batch
    from monai.data import DataLoader

    twice = PreprocessedCacheDataset(items + items[:2], transform=chain, persist_dir=tmp_path / "twice", progress=False)
    batch = next(iter(DataLoader(twice, batch_size=len(twice))))
    assert batch["image"].shape[0] == len(items) + 2 and torch.equal(batch["image"][0], batch["image"][len(items)])

    # the paths are part of the key (they carry the sources' size and mtime): other paths, other items
    moved = [dict(it, image=str(tmp_path / "missing.npy"), seg=str(tmp_path / "missing_seg.npy")) for it in items]
    with pytest.raises((RuntimeError, OSError)):
        PreprocessedCacheDataset(moved, transform=chain, persist_dir=tmp_path, cache_rate=1.0, progress=False)

    # the next run reads the files: with the source slices gone it still builds the same items
    sources = {it["image"] for it in items} | {it["seg"] for it in items}
    backup = tmp_path / "backup"
    backup.mkdir()
    for i, s in enumerate(sorted(sources)):
        shutil.move(s, backup / f"{i}.npy")
    second = PreprocessedCacheDataset(items, transform=chain, persist_dir=tmp_path, cache_rate=1.0, progress=False)
    for i in range(len(items)):
        _same(plain[i], second[i])
    assert {p: p.stat().st_mtime_ns for p in folder.glob("*.pt")} == written
    for i, s in enumerate(sorted(sources)):
        shutil.move(backup / f"{i}.npy", s)


def test_other_settings_other_folder(items, monkeypatch):
    def key(strategy="joint", size=32, margin=16):
        return transform_fingerprint(persistable_head(eval_transforms(strategy, image_size=size, margin=margin))[0])

    base = key()
    assert base == key()
    used = eval_transforms("joint", image_size=32, margin=16)
    before = transform_fingerprint(persistable_head(used)[0])
    PreprocessedCacheDataset(items, transform=used, cache_rate=1.0, progress=False)  # run-time state is no setting
    assert transform_fingerprint(persistable_head(used)[0]) == before == base
    assert len({base, key(size=64), key(margin=8), key(strategy="seg_baseline"), key(strategy="cls_baseline")}) == 5
    # the code is part of it: an edited transform module is another folder
    import monai_liver.engine.preprocessed_cache as pc

    real = pc._source_hashes
    head = persistable_head(eval_transforms("joint", image_size=32, margin=16))[0]
    modules: set[str] = set()
    pc._describe(head, modules)  # the chain's modules and those of what its transforms hold (Resized -> Resize)
    assert {"monai_liver.transforms", "monai.transforms.spatial.dictionary", "monai.transforms.spatial.array"} <= set(real(modules))
    monkeypatch.setattr(pc, "_source_hashes", lambda found: {**real(found), "monai_liver.transforms": "edited"})
    assert key() != base
    # the same in every process: tests/test_experiment.py (three processes share one folder per chain)


def test_random_transforms_and_device_moves_stay_after_the_disk(items, tmp_path):
    augmented = train_transforms("joint", image_size=32, augment=True)
    head, rest = persistable_head(augmented)
    assert head and rest and all(type(t).__name__.startswith("Rand") for t in rest[:1])
    on_device = cached_on_device(eval_transforms("joint", image_size=32), torch.device("cpu"))
    head, rest = persistable_head(on_device)
    assert [type(t).__name__ for t in rest] == ["ToDeviced"]
    ds = PreprocessedCacheDataset(items, transform=augmented, persist_dir=tmp_path, cache_rate=1.0, progress=False)
    draws = [torch.as_tensor(ds[0]["image"]) for _ in range(6)]  # the random part runs at every access
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    assert ds.persist_dir is not None and len(list(ds.persist_dir.glob("*.pt"))) > 0
    plain = PreprocessedCacheDataset(items, transform=augmented, cache_rate=1.0, progress=False)
    assert plain.persist_dir is None and len(plain) == len(ds)


def test_a_file_another_run_is_still_writing_is_a_miss(items, tmp_path):
    """Several runs share the folder: a file cut short (empty, or half a zip archive) is computed again,
    not an error."""
    from monai.data.utils import pickle_hashing

    chain = eval_transforms("joint", image_size=32)
    reference = PreprocessedCacheDataset(items, transform=chain, persist_dir=tmp_path / "a", progress=False)
    files = sorted(reference.persist_dir.glob("*.pt"))
    folder = tmp_path / "b" / "prep" / reference.persist_dir.name
    folder.mkdir(parents=True)
    whole = (reference.persist_dir / (pickle_hashing(items[0]).decode() + ".pt")).read_bytes()
    (folder / (pickle_hashing(items[0]).decode() + ".pt")).write_bytes(b"")
    (folder / (pickle_hashing(items[1]).decode() + ".pt")).write_bytes(whole[: len(whole) // 2])
    again = PreprocessedCacheDataset(items, transform=chain, persist_dir=tmp_path / "b", progress=False)
    assert again.persist_dir == folder and len(files) == len(items)
    for i in range(len(items)):
        _same(reference[i], again[i])


def test_any_other_read_error_is_raised(items, tmp_path, monkeypatch):
    """Only a file cut short is a miss: another failure to read a cached slice (here torch.load
    raising a RuntimeError of its own) reaches the run."""
    import monai.data.dataset

    chain = eval_transforms("joint", image_size=32)
    PreprocessedCacheDataset(items, transform=chain, persist_dir=tmp_path, progress=False)

    def broken(*args, **kwargs):
        raise RuntimeError("the disk failed")

    monkeypatch.setattr(monai.data.dataset.torch, "load", broken)
    with pytest.raises(RuntimeError, match="the disk failed"):
        PreprocessedCacheDataset(items, transform=chain, persist_dir=tmp_path, progress=False)
