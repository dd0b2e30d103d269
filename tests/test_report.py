"""``monai-liver report``: figures + offline HTML, checked in a real headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monai_liver.cli import main as cli_main

CLASSES = ("cyst", "hemangioma", "metastasis")
SIZE = 32


def _disc(cx, cy, r, size=SIZE):
    x, y = np.mgrid[:size, :size]
    return ((x - cx) ** 2 + (y - cy) ** 2 <= r * r).astype(np.uint8)


def make_experiment(out: Path, strategies=("cls_baseline", "seg_baseline", "ynet", "joint"), inits=("scratch", "lits")) -> Path:
    """A finished experiment, as the bundles would leave it, with synthetic predictions."""
    rng = np.random.default_rng(0)
    (out / "experiment.json").write_text(json.dumps(
        {"folds": 2, "data": "phantoms", "classes": list(CLASSES), "strategies": list(strategies), "inits": list(inits)}))
    for s in strategies:
        for init in inits:
            for fold in range(2):
                d = out / "runs" / s / init / f"fold{fold}"
                (d / "eval").mkdir(parents=True)
                rows, imgs, gts, prs = [], [], [], []
                for p in range(4):
                    for k in range(2):
                        t = CLASSES[(p + k) % 3]
                        gt = _disc(16, 16, 6)
                        pr = _disc(16 + rng.integers(-4, 5), 16, rng.integers(2, 7)) if s != "cls_baseline" else np.zeros_like(gt)
                        inter = (gt & pr).sum()
                        dice = 2 * inter / (gt.sum() + pr.sum()) if s != "cls_baseline" else np.nan
                        pred = (t if rng.random() < 0.7 else CLASSES[rng.integers(3)]) if s != "seg_baseline" else ""
                        row = {"patient_id": f"F{fold}P{p}", "source": f"img{p}.nii.gz", "slice": k, "fold": fold,
                               "true_cls": t, "pred_cls": pred}
                        row.update({f"prob_{c}": float(c == pred) for c in CLASSES})
                        row.update(dice=dice, recall=inter / gt.sum() if s != "cls_baseline" else np.nan,
                                   gt_lesion_px=int(gt.sum()), pred_lesion_px=int(pr.sum()), gt_lesions=1,
                                   detected_lesions=int(inter > 0))
                        rows.append(row)
                        img = 0.3 + 0.1 * rng.random((SIZE, SIZE)) + 0.4 * gt
                        imgs.append(img.astype(np.float32))
                        gts.append(gt)
                        prs.append(pr)
                pd.DataFrame(rows).to_csv(d / "eval" / "per_slice.csv", index=False)
                np.savez_compressed(d / "eval" / "examples.npz", image=np.stack(imgs), gt_lesion=np.stack(gts), pred_lesion=np.stack(prs))
                pd.DataFrame({"epoch": [1, 2, 3], "loss": [1.2, 0.8, 0.6], "lr": [1e-3] * 3,
                              "val_dice": [0.3, 0.5, 0.6] if s != "cls_baseline" else [np.nan] * 3,
                              "val_recall": [np.nan] * 3,
                              "val_acc": [0.4, 0.5, 0.7] if s != "seg_baseline" else [np.nan] * 3,
                              "val_bacc": [np.nan] * 3}).to_csv(d / "train_log.csv", index=False)
                (d / "DONE").write_text("ok\n")
        if "imagenet" not in inits:
            (out / "runs" / s / "imagenet").mkdir(parents=True, exist_ok=True)
            (out / "runs" / s / "imagenet" / "NOT_RUN").write_text("ImageNet weights unavailable\n")
    return out


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href"):
            v = a.get(key)
            if v:
                (self.external if "://" in v or v.startswith("//") else self.refs).append(v)
        if tag == "script" or (tag == "link" and a.get("rel") == "stylesheet"):
            self.external.append(f"<{tag}>")


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    out = make_experiment(tmp_path_factory.mktemp("exp"))
    assert cli_main(["report", str(out), "--n-boot", "200"]) == 0
    return out


def test_report_files(report_dir, capsys):
    html = (report_dir / "report.html").read_text()
    parser = _Refs()
    parser.feed(html)
    imgs = [r for r in parser.refs if r.endswith(".png")]
    assert parser.external == []  # offline: no external resources, no scripts
    assert {"figures/metrics.png", "figures/confusion.png", "figures/curves.png", "figures/examples_joint.png"} <= set(imgs)
    for ref in parser.refs:  # every referenced file (images, CSVs) exists, relative to the page
        assert (report_dir / ref).is_file(), ref
    for p in imgs:
        from PIL import Image

        with Image.open(report_dir / p) as im:
            assert im.size[0] > 200 and np.asarray(im.convert("L")).std() > 5, p
    assert "Numbers from phantoms" in html
    assert html.count("<tr") == 13  # header + 12 rows
    assert "not run: ImageNet weights unavailable" in html
    res = pd.read_csv(report_dir / "results.csv")
    assert (res.status == "done").sum() == 8


def test_examples_pick_worst():
    from monai_liver.experiment.report import pick_examples

    df = pd.DataFrame({"dice": [0.9, 0.1, 0.8, 0.5, 0.95], "true_cls": ["cyst"] * 5,
                       "pred_cls": ["cyst", "cyst", "metastasis", "cyst", "cyst"]})
    picks = pick_examples(df, n_worst=2, n_other=2)
    assert picks[:2] == [(2, "worst"), (1, "worst")]  # misclassified first, then lowest Dice
    assert len(picks) == 4 and {i for i, _ in picks[2:]} <= {0, 3, 4}


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_report_in_headless_chromium(report_dir, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it): browser check skipped")
    from PIL import Image

    # serve the folder on 127.0.0.1 (like a colleague opening a copied folder in a browser)
    server = subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(report_dir)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = server.stdout.readline()  # "Serving HTTP on 127.0.0.1 port NNNN (...)"
        port = int(line.split(" port ")[1].split()[0])
        shot = tmp_path / "shot.png"
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1400,2200",
               f"--screenshot={shot}", f"http://127.0.0.1:{port}/report.html"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert shot.is_file(), proc.stderr[-2000:]
    finally:
        server.terminate()
        server.wait(timeout=10)
    with Image.open(shot) as im:
        rgb = np.asarray(im.convert("RGB")).astype(float)
    assert rgb.std() > 10  # not blank
    # the LiTS bars (#dd8452) are drawn only inside metrics.png: the browser loaded the images
    orange = (np.abs(rgb - np.array([0xDD, 0x84, 0x52])).max(-1) < 12).sum()
    assert orange > 200, orange
