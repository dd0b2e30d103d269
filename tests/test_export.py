"""``monai-liver export``: the TorchScript model gives the checkpoint's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_liver.cli import main as cli_main
from monai_liver.errors import LiverError
from monai_liver.constants import bundles_dir
from monai_liver.inference import infer as inf
from monai_liver.inference.model import load_bundle_model
from monai_liver.inference.export import export

REAL = Path("/work/shared/data/real")
alt = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
REAL = alt if alt.is_dir() else REAL


def _checkpoint(path: Path, strategy: str) -> Path:
    from monai_liver.networks.factory import build_network

    torch.manual_seed(1)
    net = build_network(strategy)
    with torch.no_grad():  # non-trivial batch-norm statistics, so eval mode differs from train mode
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    torch.save({"model": net.state_dict()}, path)
    return path


def test_export_matches_checkpoint(tmp_path):
    joint = bundles_dir() / "joint"
    ckpt = _checkpoint(tmp_path / "model.pt", "joint")
    assert cli_main(["export", "--bundle", str(joint), "--model", str(ckpt), "--out", str(tmp_path / "model.ts")]) == 0
    extra = {"metadata.json": "", "inference.json": ""}
    ts = torch.jit.load(str(tmp_path / "model.ts"), _extra_files=extra)
    assert json.loads(extra["inference.json"])["strategy"] == "joint" and json.loads(extra["metadata.json"])["version"]

    loaded = load_bundle_model(joint, ckpt, "cpu", image_size=64)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        ref = loaded.net(x)["seg"]
        got = ts(x)
    assert got.shape == ref.shape == (2, 5, 64, 64)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)

    # the whole inference pipeline on a real DICOM series: same masks, same probabilities
    series = REAL / "dcmqi_ct3slice" / "ct"
    if not series.is_dir():
        pytest.skip(f"real CT samples not found at {REAL}")
    from_ts = load_bundle_model(joint, tmp_path / "model.ts", "cpu", image_size=64)
    assert from_ts.torchscript
    a = inf.infer(series, tmp_path / "a", loaded=loaded, overlays=False)
    b = inf.infer(series, tmp_path / "b", loaded=from_ts, overlays=False)
    for name in ("lesion.nii.gz", "liver.nii.gz"):
        np.testing.assert_array_equal(np.asanyarray(nib.load(str(tmp_path / "a" / name)).dataobj),
                                      np.asanyarray(nib.load(str(tmp_path / "b" / name)).dataobj))
    assert [d["voxels"] for d in a["lesions"]] == [d["voxels"] for d in b["lesions"]]
    for da, db in zip(a["lesions"], b["lesions"]):
        for c, p in da["class_probabilities"].items():
            assert db["class_probabilities"][c] == pytest.approx(p, abs=1e-3)


def test_export_cls_baseline_traced_and_bad_checkpoint(tmp_path):
    bundle = bundles_dir() / "cls_baseline"
    ckpt = _checkpoint(tmp_path / "cls.pt", "cls_baseline")
    path = export(bundle, ckpt, tmp_path / "cls", use_trace=True, image_size=64)
    assert path.name == "cls.ts"
    from monai_liver.engine.handlers import load_model
    from monai_liver.networks.factory import build_network
    from monai_liver.networks.wrapper import TensorOutput

    net = load_model(TensorOutput(build_network("cls_baseline")), ckpt).eval()
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(path))(x), net(x), atol=1e-4, rtol=1e-4)
    # a checkpoint of another bundle: one clear error, nothing written
    with pytest.raises(LiverError, match="does not fit"):
        export(bundle, _checkpoint(tmp_path / "seg.pt", "seg_baseline"), tmp_path / "bad.ts")
    assert not (tmp_path / "bad.ts").exists()
