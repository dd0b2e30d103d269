"""``monai-liver demo``: the README's first command, end to end on phantoms.

Stages (each timed): generate the CT phantoms, write a preview picture, write the datalists,
validate them, run the quick experiment (every strategy x init x fold, CPU-sized), print the
results table with the path of the report, then run ``infer`` with the joint model package on the
LiTS-like volumes held out from pretraining and print its liver / lesion Dice, detection recall and
per-lesion type accuracy. Everything it reports comes from phantoms.
"""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager
from pathlib import Path

#: runs of the quick experiment at a time (``--runs-per-device``), each with its share of the CPU threads:
#: on 2 CPU cores two one-thread runs trained the demo's 18 runs in 813 s, against 1169 s for one two-thread
#: run at a time, with the same table within its intervals (README, "What `make demo` prints")
RUNS_AT_A_TIME = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    parser.add_argument("--seed", type=int, default=0, help="phantom and training seed")
    parser.add_argument(
        "--data-only", action="store_true", help="stop after phantoms, preview, datalists and validation"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--runs-per-device", type=int, default=RUNS_AT_A_TIME, metavar="K",
                        help=f"runs of the experiment at a time, the CPU threads split between them (default {RUNS_AT_A_TIME})")


@contextmanager
def _stage(name: str, times: dict[str, float]):
    print(f"== {name}", flush=True)
    start = time.perf_counter()
    yield
    times[name] = time.perf_counter() - start
    print(f"   {name}: {times[name]:.1f} s", flush=True)


def main(args: argparse.Namespace) -> int:
    from monai_liver.data import datalist, phantoms, validation
    from monai_liver.errors import LiverError
    from monai_liver.experiment.settings import QUICK

    out: Path = args.out
    times: dict[str, float] = {}
    lits_dir, lesion_dir, lists_dir = out / "phantoms" / "lits", out / "phantoms" / "lesions", out / "data_lists"
    lists_dir.mkdir(parents=True, exist_ok=True)

    with _stage("phantoms", times):
        phantoms.make_lits_phantoms(lits_dir, n_volumes=QUICK.lits_volumes, shape=QUICK.lits_shape, seed=args.seed)
        manifest = phantoms.make_lesion_slices(lesion_dir, seed=args.seed)
        print(f"   LiTS-like volumes in {lits_dir}, lesion-type slices in {manifest}")
    with _stage("preview", times):
        png = phantoms.preview(manifest, out / "phantom_preview.png")
        print(f"   preview: {png}")
    with _stage("datalists", times):
        lits_list = datalist.write_datalist(datalist.datalist_from_lits(lits_dir, seed=args.seed), lists_dir / "lits.json")
        lesion_list = datalist.write_datalist(
            datalist.datalist_from_manifest(manifest, seed=args.seed), lists_dir / "lesions.json"
        )
        for path in (lits_list, lesion_list):
            print(datalist.summarise(datalist.read_datalist(path)))
    with _stage("validation", times):
        for path in (lits_list, lesion_list):
            problems = validation.validate_datalist(path)
            errors = [p for p in problems if p.level == "error"]
            for p in problems:
                print(f"   {p}")
            if errors:
                raise LiverError(f"{path}: {len(errors)} validation error(s), see above")
            print(f"   {path}: ok ({len(problems)} warning(s))")
    if not args.data_only:
        from monai_liver.experiment import runner

        with _stage("experiment (quick)", times):
            result = runner.run_experiment(
                out=out / "experiment",
                lits_datalist=lits_list,
                datalist=lesion_list,
                preset="quick",
                seed=args.seed,
                device=args.device,
                phantoms=True,
                runs_per_device=args.runs_per_device,
            )
        print()
        print(result.table_markdown)
        print(f"\nreport: {result.report_html}")
        with _stage("end-to-end check (infer on held-out LiTS-like volumes)", times):
            from monai_liver.experiment.packages import check_held_out

            check_held_out(out / "experiment", device=args.device)
    print("\nstage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    print(f"total: {sum(times.values()):.0f} s (all numbers above come from CT phantoms, not patients)")
    return 0
