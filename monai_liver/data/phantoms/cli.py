"""``monai-liver phantoms``: the command line of this package."""

from __future__ import annotations

import argparse

from monai_liver.constants import DEFAULT_CLASSES
from monai_liver.data.phantoms.imaging import _check_seed, _prepare_dir
from monai_liver.data.phantoms.lits import _check_lits, _make_lits
from monai_liver.data.phantoms.preview import preview
from monai_liver.data.phantoms.slices import _check_slices, _make_slices


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder: writes OUT/lits/ and OUT/lesions/")
    parser.add_argument("--lits-volumes", type=int, default=6, metavar="N", help="LiTS-like 3D volumes (default 6)")
    parser.add_argument("--lits-shape", type=int, nargs=3, default=(160, 160, 48), metavar=("X", "Y", "Z"),
                        help="voxels per LiTS-like volume (default 160 160 48)")
    parser.add_argument("--patients", type=int, default=140, help="lesion-type patients (default 140)")
    parser.add_argument("--slices", type=int, default=332, help="lesion-type 2D slices in all (default 332)")
    parser.add_argument("--size", type=int, default=256, help="pixels per 2D slice side (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default 0)")
    parser.add_argument("--preview", metavar="PNG", default=None, help="also save a preview grid of the slices")


def main(args: argparse.Namespace) -> int:
    # validate everything before writing anything
    _check_lits(args.lits_volumes, args.lits_shape)
    _check_slices(args.patients, args.slices, args.size)
    _check_seed(args.seed)
    out = _prepare_dir(args.out)
    _, lits = _make_lits(out / "lits", args.lits_volumes, args.lits_shape, args.seed)
    manifest, les = _make_slices(out / "lesions", args.patients, args.slices, args.size, args.seed, DEFAULT_CLASSES)
    per_class = ", ".join(f"{c} {s['slices']} slices / {s['patients']} patients" for c, s in les["classes"].items())
    text = (
        f"Wrote {lits['volumes']} LiTS-like volumes ({'x'.join(map(str, lits['shape']))} voxels, "
        f"{lits['lesions']} lesions, {lits['lesion_free']} lesion-free) to {out / 'lits'}, and "
        f"{les['slices']} lesion-type slices ({les['size']}x{les['size']}) from {les['patients']} patients "
        f"({per_class}) to {manifest}. These are synthetic phantoms (seed {args.seed}), not patient data."
    )
    if args.preview:
        png = preview(manifest, args.preview)
        text += f" Preview: {png}."
    print(text)
    return 0
