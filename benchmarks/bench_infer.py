"""How long ``monai-liver infer`` takes on a full-size CT volume, against the networks alone.

A LiTS-like phantom of ``--shape`` (default 512 x 512 x 200, written once to ``--work``) goes
through ``infer`` with a model package (default the demo's ``packages/joint-lits``: liver localiser
on every whole slice, then the joint model on each liver slice's ROI), outputs written as a user
gets them (no overlays). Printed: seconds for reading, stage 1, stage 2 and the whole command, slices
per second, and, as the plain baseline of the same run, the time of the two networks alone on
pre-cut tensors of the same number of slices and passes (so the ratio is what the pipeline adds around
them), and the whole ``infer`` once more with the flip average switched (its cost)::

    python benchmarks/bench_infer.py --model demo_out/experiment/packages/joint-lits
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ROOT / "demo_out" / "experiment" / "packages" / "joint-lits",
                   help="model package folder (with liver_model.pt)")
    p.add_argument("--shape", type=int, nargs=3, default=(512, 512, 200), metavar=("X", "Y", "Z"))
    p.add_argument("--work", type=Path, default=Path("/tmp/monai_liver_bench_infer"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    args = p.parse_args()

    import numpy as np
    import torch

    from monai_liver.data.io import load_ct
    from monai_liver.data.phantoms import make_lits_phantoms
    from monai_liver.inference.infer import infer, load_models

    if args.threads:
        torch.set_num_threads(args.threads)
    vol = args.work / f"volume-{'x'.join(map(str, args.shape))}" / "volume-0.nii.gz"
    if not vol.is_file():
        t = time.perf_counter()
        make_lits_phantoms(vol.parent, n_volumes=1, shape=args.shape, seed=0)
        print(f"phantom {args.shape} written in {time.perf_counter() - t:.0f} s: {vol}")
    predictor = load_models(args.model, device=args.device)
    t0 = time.perf_counter()
    hu, affine = load_ct(vol)
    t_read = time.perf_counter() - t0
    t1 = time.perf_counter()
    liver, _ = predictor.find_liver(hu)
    t_stage1 = time.perf_counter() - t1
    t2 = time.perf_counter()
    pred = predictor(hu, affine, liver)
    t_stage2 = time.perf_counter() - t2
    t3 = time.perf_counter()
    res = infer(vol, args.work / "out", loaded=predictor, overlays=False)
    t_total = time.perf_counter() - t3
    n1, n2 = hu.shape[2], len(pred.slices)
    predictor.flip_average = not predictor.flip_average  # the other way, for its cost
    t4 = time.perf_counter()
    infer(vol, args.work / "out", loaded=predictor, overlays=False)
    t_other = time.perf_counter() - t4
    predictor.flip_average = not predictor.flip_average
    passes = 4 if predictor.flip_average else 1

    # the plain baseline: both networks alone, same slice counts, tensors cut beforehand
    def net_only(model, n: int) -> float:
        x = torch.rand(min(n, 16), 1, model.image_size, model.image_size, device=model.device)
        with torch.no_grad():
            model.net(x)  # warm-up
            t = time.perf_counter()
            for start in range(0, n, 16):
                model.net(x[: min(16, n - start)])
        return time.perf_counter() - t

    t_nets = net_only(predictor.localiser or predictor.model, n1) + passes * net_only(predictor.model, n2)
    if predictor.lesion_gate is not None:
        t_nets += passes * net_only(predictor.lesion_gate, n2)
    print(f"volume {hu.shape} ({np.prod(hu.shape) / 1e6:.0f} M voxels), model {args.model}, device {args.device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"read {t_read:.1f} s | stage 1 (liver, {n1} whole slices) {t_stage1:.1f} s | "
          f"stage 2 (lesions, {n2} liver slices) {t_stage2:.1f} s")
    print(f"infer, whole (read, both stages, lesions, outputs): {t_total:.1f} s, {n1 / t_total:.1f} slices/s, "
          f"{len(res['lesions'])} lesion(s)")
    print(f"infer with flip_average={not predictor.flip_average}: {t_other:.1f} s; flip_average on / off = "
          f"{(t_total / t_other) if predictor.flip_average else (t_other / t_total):.2f}x")
    print(f"networks alone on pre-cut tensors (same slices and passes: localiser, stage 2 and the gate x {passes}): "
          f"{t_nets:.1f} s; infer / networks alone = {t_total / t_nets:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
