"""What a strategy learns per CPU-second: the bundle against a bare PyTorch loop, same network.

Both train ``--strategy`` (default ``joint``) with ``--backbone`` on the lesion-type datalist's
training folds for the same wall-time budget (``--budget`` seconds of training, start-up and
caching not counted), then are scored by the same code on the held-out fold:

- bundle: ``python -m monai.bundle run`` with ``bundles/<strategy>/configs/train.json``
  (``max_seconds`` = budget, ``epochs`` = the epochs the bare loop fitted in the budget, so that
  both cosine schedules end together; its last weights, ``checkpoint_last.pt``, are scored);
- bare: the slices cut once by the bundles' evaluation chain (window, liver-ROI crop, resize) into
  one tensor, then a plain loop: AdamW, random flips on the batch (no intensity changes), MONAI ``DiceCELoss`` (+ CE on a
  class head), no engine, no handlers, no validation.

Printed per way: held-out lesion Dice (per slice, averaged over slices with a lesion), slice
type accuracy (class head, or the joint vote), epochs, training slices/s; then the bundle/bare
ratios. Run (phantoms from ``monai-liver demo --data-only --out /tmp/d``)::

    python benchmarks/bench_learning.py --datalist /tmp/d/data_lists/lesions.json --budget 76
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cut_tensors(datalist: Path, fold: int, split: str, strategy: str, image_size: int, cache_dir: Path):
    """The split's slices through the evaluation chain, stacked: image (N, 1, S, S) float in [0, 1],
    seg (N, 1, S, S) long, cls (N,) long (-1: no type)."""
    import torch

    from monai_liver.engine.data import datalist_dataset_dir, slice_dataset

    ds = slice_dataset(datalist, datalist_dataset_dir(datalist), fold, split, strategy, image_size, cache_dir, augment=False)
    items = [ds[i] for i in range(len(ds))]
    image = torch.stack([torch.as_tensor(it["image"]).as_subclass(torch.Tensor) for it in items]).float()
    seg = torch.stack([torch.as_tensor(it["seg"]).as_subclass(torch.Tensor) for it in items]).long()
    cls = torch.stack([torch.as_tensor(it["cls"]).as_subclass(torch.Tensor) for it in items]).long().reshape(-1)
    return image, seg, cls


def score(net, image, seg, cls, batch: int = 32) -> dict:
    """Held-out lesion Dice (mean over slices with a lesion) and type accuracy (slices with a type)."""
    import numpy as np
    import torch

    from monai_liver.engine.metrics import class_probabilities, dice_score, lesion_from_logits

    net.eval()
    dices, hits, n_typed = [], 0, 0
    with torch.no_grad():
        for i in range(0, len(image), batch):
            out = net(image[i : i + batch])
            gt = (seg[i : i + batch] >= 2).numpy()
            if out.get("seg") is not None:
                pred = lesion_from_logits(out["seg"]).numpy()
                dices += [dice_score(p, g) for p, g in zip(pred, gt) if g.any()]
            prob = class_probabilities(out)
            if prob is not None:
                y = cls[i : i + batch]
                typed = y >= 0
                hits += int((prob.argmax(1)[typed] == y[typed]).sum())
                n_typed += int(typed.sum())
    return {"dice": float(np.mean(dices)) if dices else float("nan"), "acc": hits / n_typed if n_typed else float("nan")}


def bare_loop(strategy: str, backbone: str, n_classes: int, train, budget: float, batch: int, lr: float, seed: int,
              dice_batch: bool = True, cosine: bool = True):
    """Train for ``budget`` seconds on pre-cut tensors; returns (network, epochs, slices/s)."""
    import torch
    from monai.losses import DiceCELoss

    from monai_liver.engine.prepare_batch import augment_batch
    from monai_liver.networks.factory import build_network, seg_channels

    torch.manual_seed(seed)
    image, seg, cls = train
    net = build_network(strategy, n_classes=n_classes, backbone=backbone)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, batch=dice_batch) if seg_channels(strategy, n_classes) else None
    ce = torch.nn.CrossEntropyLoss(ignore_index=-1)
    n, seen, epochs = len(image), 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < budget:
        net.train()
        order = torch.randperm(n)
        for i in range(0, n - batch + 1 if n > batch else 1, batch):
            idx = order[i : i + batch]
            if cosine:  # cosine decay of the learning rate over the time budget
                frac = min(1.0, (time.perf_counter() - start) / budget)
                for g in opt.param_groups:
                    g["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * frac))
            x, y = augment_batch(image[idx], seg[idx], intensity=0.0)  # random flips per slice
            c = cls[idx]
            out = net(x)
            loss = 0.0
            if dice_ce is not None:
                loss = loss + dice_ce(out["seg"], y)
            if out.get("cls") is not None and strategy != "joint" and bool((c >= 0).any()):
                loss = loss + ce(out["cls"], c)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(x)
            if time.perf_counter() - start >= budget:
                break
        epochs += 1
    return net, epochs, seen / (time.perf_counter() - start)


def bundle_run(strategy: str, backbone: str, datalist: Path, fold: int, image_size: int, budget: float, batch: int,
               lr: float, seed: int, out: Path, extra: dict, val_interval: int = 5):
    """``python -m monai.bundle run`` of the strategy's train.json for ``budget`` seconds of training;
    returns (network with the last weights, epochs, training slices/s)."""
    import csv

    from monai_liver.engine.data import datalist_classes
    from monai_liver.engine.handlers import load_model
    from monai_liver.networks.factory import build_network

    bundle = ROOT / "bundles" / strategy
    args = {"datalist": str(datalist), "fold": fold, "image_size": image_size, "backbone": backbone,
            "batch_size": batch, "learning_rate": lr, "seed": seed, "max_seconds": budget,
            "output_dir": str(out), "progress": False, "val_interval": val_interval, **extra}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "train.json"),
           "--bundle_root", str(bundle)]
    for k, v in args.items():
        cmd += [f"--{k}", json.dumps(v) if isinstance(v, bool) else str(v)]
    log = out / "bench.log"
    out.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ)).returncode
    if rc:
        sys.exit(f"bundle run failed ({rc}); see {log}")
    with (out / "train_log.csv").open() as f:
        rows = list(csv.DictReader(f))
    seconds = sum(float(r.get("seconds") or 0) for r in rows)
    slices = sum(int(float(r.get("slices") or 0)) for r in rows)
    net = build_network(strategy, n_classes=len(datalist_classes(datalist)), backbone=backbone)
    load_model(net, out / "checkpoint_last.pt")
    return net, len(rows), slices / seconds if seconds else float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datalist", type=Path, required=True, help="lesion-type datalist (monai-liver datalist --manifest)")
    p.add_argument("--strategy", default="joint", choices=("cls_baseline", "seg_baseline", "ynet", "joint"))
    p.add_argument("--backbone", default="basicunet-small", help="the quick preset's (default) or another")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--budget", type=float, default=76.0, help="training seconds per way")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-interval", type=int, default=5,
                   help="bundle: validate every N epochs (the quick preset's 5; the bare loop never validates)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    p.add_argument("--skip-bundle", action="store_true")
    p.add_argument("--skip-bare", action="store_true")
    p.add_argument("--bundle-arg", action="append", default=[], metavar="KEY=JSON", help="extra bundle override")
    a = p.parse_args(argv)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    from monai_liver.engine.data import datalist_classes

    n_classes = len(datalist_classes(a.datalist))
    extra = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.bundle_arg)}
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench_learning_") as tmp:
        tmp = Path(tmp)
        val = cut_tensors(a.datalist, a.fold, "val", a.strategy, a.image_size, tmp / "cache")
        if not a.skip_bare:
            train = cut_tensors(a.datalist, a.fold, "train", a.strategy, a.image_size, tmp / "cache")
            net, epochs, rate = bare_loop(a.strategy, a.backbone, n_classes, train, a.budget, a.batch_size, a.lr, a.seed)
            rows["bare"] = {**score(net, *val), "epochs": epochs, "slices_per_s": rate, "n_train": len(train[0])}
        if not a.skip_bundle:
            extra.setdefault("epochs", rows["bare"]["epochs"] if "bare" in rows else 1000)
            net, epochs, rate = bundle_run(a.strategy, a.backbone, a.datalist, a.fold, a.image_size, a.budget,
                                           a.batch_size, a.lr, a.seed, tmp / "bundle", extra, a.val_interval)
            rows["bundle"] = {**score(net, *val), "epochs": epochs, "slices_per_s": rate}
    print(f"{a.strategy}, {a.backbone}, {a.image_size} px, batch {a.batch_size}, lr {a.lr}, budget {a.budget:.0f} s, "
          f"fold {a.fold} held out ({len(val[0])} slices), torch threads {torch.get_num_threads()}")
    print(f"{'way':8s} {'dice':>6s} {'acc':>6s} {'epochs':>6s} {'slices/s':>9s}")
    for way, r in rows.items():
        print(f"{way:8s} {r['dice']:6.3f} {r['acc']:6.3f} {r['epochs']:6d} {r['slices_per_s']:9.1f}")
    if len(rows) == 2:
        b, s = rows["bundle"], rows["bare"]
        print(f"bundle - bare: dice {b['dice'] - s['dice']:+.3f}, acc {b['acc'] - s['acc']:+.3f}; "
              f"throughput bundle/bare {b['slices_per_s'] / s['slices_per_s']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
