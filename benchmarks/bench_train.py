"""Training slices/s of a strategy bundle: today's plain pipeline against the fast path, in one run.

Both ways run the same ``bundles/<strategy>/configs/train.json`` through ``monai.bundle.run`` in
this process, on the same slices, for ``--epochs`` epochs; only these bundle values differ:

- ``plain``: ``amp`` false, ``channels_last`` false, ``cache_on_device`` false, ``compile`` false
  (the data loader copies each batch from the host; float32; the default memory format);
- ``fast``: the bundles' defaults for ``--device`` (on CUDA: bf16 autocast where supported, channels-last
  network and input, every preprocessed slice cached on the GPU, no loader workers), plus ``--compile``
  and any ``--fast KEY=JSON``.

Printed per way: steady-state training slices/s (the epochs after the first, from the bundle's own
``train_log.csv``: training time without validation), and on CUDA the peak GPU memory and, where
``torch.cuda.utilization`` can read NVML, the mean share of time the GPU was busy; then the
fast/plain ratio. On a CPU the two ways share their defaults (every fast-path value is off there),
so the ratio there says only that the fast path costs nothing. Run::

    python benchmarks/bench_train.py --device cuda --image-size 256 --batch-size 16 --slices 2000
    python benchmarks/bench_train.py --image-size 32 --slices 32 --epochs 2      # a CPU smoke run

Without ``--datalist`` it makes lesion-type phantoms (``--slices`` of them) in a temporary folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAIN = {"amp": False, "channels_last": False, "cache_on_device": False, "compile": False}


class GpuBusy:
    """Samples ``torch.cuda.utilization()`` (NVML) every ``period`` s in a thread; ``mean`` is None
    where NVML cannot be read (no ``pynvml`` / ``nvidia-ml-py``) or there is no GPU."""

    def __init__(self, period: float = 0.2) -> None:
        self.period, self.samples, self._stop = period, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import torch

        while not self._stop.is_set():
            try:
                self.samples.append(float(torch.cuda.utilization()))
            except Exception:  # no NVML here: report n/a
                return
            time.sleep(self.period)

    def __enter__(self):
        import torch

        if torch.cuda.is_available():
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def phantom_datalist(folder: Path, n_slices: int, size: int = 128) -> Path:
    """``n_slices`` lesion-type phantom slices (about 2.4 per patient) as a 2-fold datalist."""
    from monai_liver.data.datalist import datalist_from_manifest, write_datalist
    from monai_liver.data.phantoms import make_lesion_slices

    manifest = make_lesion_slices(folder / "data", n_patients=max(4, n_slices * 5 // 12), n_slices=n_slices, size=size, seed=0)
    return Path(write_datalist(datalist_from_manifest(manifest, n_folds=2, seed=0), folder / "datalist.json"))


def train_once(strategy: str, datalist: Path, out: Path, values: dict) -> dict:
    """One in-process ``monai.bundle run`` of ``train.json`` with ``values``; returns slices/s
    (epochs after the first), peak GPU memory (GiB, CUDA only) and the GPU busy share."""
    import torch
    from monai.bundle import run

    bundle = ROOT / "bundles" / strategy
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with GpuBusy() as busy:
        run(config_file=str(bundle / "configs" / "train.json"), bundle_root=str(bundle), datalist=str(datalist),
            output_dir=str(out), cache_dir=str(out.parent / "cache"), progress=False, **values)
    with (out / "train_log.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    steady = rows[1:] or rows
    seconds = sum(float(r["seconds"]) for r in steady)
    slices = sum(float(r["slices"]) for r in steady)
    memory = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"slices_per_s": slices / seconds if seconds else float("nan"), "epochs": len(rows),
            "gpu_memory_gib": memory, "gpu_busy": busy.mean}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--strategy", default="joint", choices=("cls_baseline", "seg_baseline", "ynet", "joint", "lits_pretrain"))
    p.add_argument("--backbone", default="efficientnet-b0")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3, help="the first is warm-up and not counted")
    p.add_argument("--slices", type=int, default=256, help="training slices per epoch (phantoms made when no --datalist)")
    p.add_argument("--datalist", type=Path, help="a lesion-type datalist (default: phantoms in a temporary folder)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda:0)")
    p.add_argument("--num-workers", type=int, default=0, help="the plain way's data loader workers")
    p.add_argument("--compile", action="store_true", help="fast way: torch.compile the network (SupervisedTrainer)")
    p.add_argument("--fast", action="append", default=[], metavar="KEY=JSON", help="another bundle value for the fast way")
    a = p.parse_args(argv)
    import torch

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda: no CUDA device here")
    device = f"$torch.device('{a.device}')"
    common = {"strategy": a.strategy, "backbone": a.backbone, "image_size": a.image_size, "batch_size": a.batch_size,
              "epochs": a.epochs, "val_interval": a.epochs + 1, "max_train_slices": a.slices, "max_val_slices": 8,
              "fold": 0, "device": device, "seed": 0}
    on_gpu = a.device.startswith("cuda")
    fast = {"amp": on_gpu, "channels_last": on_gpu, "cache_on_device": on_gpu, "compile": a.compile}
    fast.update({k: json.loads(v) for k, v in (s.split("=", 1) for s in a.fast)})
    ways = {"plain": {**common, **PLAIN, "num_workers": a.num_workers}, "fast": {**common, **fast, "num_workers": 0}}
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        tmp = Path(tmp)
        datalist = a.datalist or phantom_datalist(tmp, a.slices)
        for name, values in ways.items():
            results[name] = train_once(a.strategy, datalist, tmp / name, values)
    print(f"{a.strategy}, {a.backbone}, {a.image_size} px, batch {a.batch_size}, {a.epochs} epochs of up to {a.slices} "
          f"slices, device {a.device}, torch threads {torch.get_num_threads()}")
    print("fast: " + ", ".join(f"{k} {v}" for k, v in fast.items()))
    print(f"{'way':6s} {'slices/s':>9s} {'GPU GiB':>8s} {'GPU busy':>9s}")
    for name, r in results.items():
        mem = f"{r['gpu_memory_gib']:.2f}" if r["gpu_memory_gib"] is not None else "-"
        busy = f"{r['gpu_busy']:.0f}%" if r["gpu_busy"] is not None else "n/a"
        print(f"{name:6s} {r['slices_per_s']:9.1f} {mem:>8s} {busy:>9s}")
    print(f"fast/plain: {results['fast']['slices_per_s'] / results['plain']['slices_per_s']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
