"""Training-input throughput: cached 2D slices vs re-reading the 3D volume for every slice.

Both pipelines feed the same ``lits_pretrain`` training transforms (window, liver-ROI crop, resize,
augmentation) on the same LiTS-like phantom volumes:

- cached: :func:`monai_liver.data.slices.materialise_slices` extracts every liver slice once into
  ``.npy`` files, and a MONAI ``CacheDataset`` keeps the deterministic part of the chain in memory
  (what the bundles do);
- plain: a MONAI ``Dataset`` of ``(volume, slice index)`` items whose ``LoadImaged`` reads the whole
  ``.nii.gz`` (decompressing it from the start) for every slice, then takes the slice.

It measures data loading only (``DataLoader`` iteration, no network), slices per second over
``--epochs`` epochs after the set-up, and prints the set-up time of each pipeline (extraction +
caching vs nothing) and the ratio; and the caching of a later run: a plain ``CacheDataset`` against the
bundles' :class:`~monai_liver.engine.preprocessed_cache.PreprocessedCacheDataset` reading what a first
run wrote. Run: ``python benchmarks/bench_cache.py [--volumes 4 --shape 256 256 64]``.

Measured (defaults: 4 volumes of 256 x 256 x 64, 201 liver slices, image_size 128, batch 16, 0
workers, 1 CPU thread, a shared 2-core machine): cached 99.5 slices/s, plain 6.9 slices/s, 14.5x;
set-up of the cache 1.3 s extraction + 3.3 s caching, once. A later run's caching (2026-12-02, the same
defaults, nothing else running): CacheDataset 4.06 s, PreprocessedCacheDataset reading the first
run's files 0.53 s, 7.7x. Real LiTS volumes (512 x 512 x 75-987)
cost more per re-read, so the ratio grows with them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def plain_transforms(strategy: str, image_size: int):
    """Load the 3D volume + label, take axial slice ``slice`` (RAS), then the bundles' chain."""
    import numpy as np
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, MapTransform, Orientationd

    from monai_liver.transforms import train_transforms

    class TakeSliced(MapTransform):
        """(1, X, Y, Z) volume -> (X, Y) slice ``d["slice"]`` with a 2D affine, as the cached chain's
        ``NumpyReader`` loads it."""

        def __call__(self, data):
            d = dict(data)
            k = int(d["slice"])
            for src, dst, dtype in (("image", "image", np.float32), ("label", "seg", np.uint8)):
                arr = np.ascontiguousarray(np.asarray(d.pop(src)[0, :, :, k], dtype=dtype))
                t = MetaTensor(torch.as_tensor(arr), meta={"spatial_shape": np.asarray(arr.shape)})
                t.spatial_ndim = 2
                d[dst] = t
            return d

    # the bundles' chain after its NumpyReader LoadImaged: EnsureChannelFirstd(no_channel), window, ...
    rest = train_transforms(strategy, image_size=image_size).transforms[1:]
    load = [
        LoadImaged(["image", "label"], image_only=True),
        EnsureChannelFirstd(["image", "label"]),
        Orientationd(["image", "label"], axcodes="RAS"),
        TakeSliced(["image"]),
    ]
    return Compose(load + list(rest))


def throughput(loader, epochs: int) -> float:
    n, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            n += int(batch["image"].shape[0])
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--volumes", type=int, default=4)
    p.add_argument("--shape", type=int, nargs=3, default=(256, 256, 64), help="phantom volume size (X Y Z)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--work", type=Path, default=None, help="folder for phantoms and cache (default: a temp dir)")
    args = p.parse_args(argv)

    import torch
    from monai.data import CacheDataset, DataLoader, Dataset
    from monai.utils import set_determinism

    from monai_liver.data.phantoms import make_lits_phantoms
    from monai_liver.data.slices import materialise_slices
    from monai_liver.engine.preprocessed_cache import PreprocessedCacheDataset
    from monai_liver.transforms import train_transforms

    torch.set_num_threads(1)
    set_determinism(0)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        vols = make_lits_phantoms(work / "lits", n_volumes=args.volumes, shape=tuple(args.shape), seed=0)
        items = [{"image": v.name, "label": v.name.replace("volume", "segmentation"), "patient_id": str(i), "fold": 0}
                 for i, v in enumerate(vols)]  # fmt: skip

        t0 = time.perf_counter()
        slices = materialise_slices(items, work / "lits", work / "cache")
        t_extract = time.perf_counter() - t0
        t0 = time.perf_counter()
        cached = CacheDataset(slices, train_transforms("lits_pretrain", image_size=args.image_size), progress=False)
        t_cache = time.perf_counter() - t0
        # the bundles' dataset: a first run writes the preprocessed slices, a later run reads them back
        PreprocessedCacheDataset(slices, train_transforms("lits_pretrain", image_size=args.image_size),
                                 persist_dir=work / "cache", progress=False)
        t0 = time.perf_counter()
        later = PreprocessedCacheDataset(slices, train_transforms("lits_pretrain", image_size=args.image_size),
                                         persist_dir=work / "cache", progress=False)
        t_later = time.perf_counter() - t0
        plain_items = [
            {"image": str(work / "lits" / s["source"]), "label": str(work / "lits" / s["source"]).replace("volume", "segmentation"),
             "slice": s["slice"]}
            for s in slices
        ]  # fmt: skip
        plain = Dataset(plain_items, plain_transforms("lits_pretrain", args.image_size))

        def loader(ds):
            return DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers)

        a = cached[0]
        b = plain[0]
        assert a["image"].shape == b["image"].shape == later[0]["image"].shape == (1, args.image_size, args.image_size)
        fast = throughput(loader(cached), args.epochs)
        slow = throughput(loader(plain), args.epochs)

    print(f"{args.volumes} LiTS-like phantom volumes {tuple(args.shape)}, {len(slices)} liver slices, "
          f"image_size {args.image_size}, batch {args.batch_size}, {args.workers} workers, {args.epochs} epochs, "
          "data loading only (no network)")  # fmt: skip
    print(f"cached (slice cache + CacheDataset): {fast:8.1f} slices/s  (set-up: extract {t_extract:.1f} s + cache {t_cache:.1f} s, once)")
    print(f"plain (Dataset + LoadImaged of the 3D .nii.gz per slice): {slow:8.1f} slices/s")
    print(f"ratio cached / plain: {fast / slow:.1f}x")
    print(f"a later run's caching: CacheDataset {t_cache:.2f} s, PreprocessedCacheDataset reading the first run's files "
          f"{t_later:.2f} s: {t_cache / t_later:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
