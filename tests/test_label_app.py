"""The MONAI Label app, served for real: ``monai-liver label-server`` on a free loopback port with a
studies folder holding a LiTS-like phantom (stored in LPS voxel order, so the mask must be written
back in the study's own orientation) and a real abdominal CT; ``/info``, ``/infer`` on both,
``/activelearning``, then a fine-tuning round through ``/train``.

The served model is an untrained joint network (random weights, no download) whose segmentation
head's bias favours the "hemangioma" channel, so the expected answer is known: every body voxel of
every segmented slice is hemangioma (label 3), the study's class is hemangioma with probability
about 1, and voxels outside the body are 0 -- which also pins the mask's orientation to the CT's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("monailabel", reason="MONAI Label is the 'label' extra: pip install -e '.[label]'")

from test_mlflow_server import free_port, stop_server, wait_until_up  # noqa: E402

pytestmark = pytest.mark.slow

CLASSES = ["cyst", "hemangioma", "metastasis"]
FAVOURED = "hemangioma"  # label value 2 + 1 = 3
IMAGE_SIZE = 64


def _biased_joint_model(path: Path) -> Path:
    import torch

    from monai_liver.networks.factory import build_network

    torch.manual_seed(0)
    net = build_network("joint", n_classes=len(CLASSES))
    state = net.state_dict()
    state["segmentation_head.0.bias"][2 + CLASSES.index(FAVOURED)] += 50.0
    torch.save({"model": state}, path)
    return path


@pytest.fixture(scope="module")
def label_server(tmp_path_factory, real_dir):
    from monai_liver.data.phantoms import make_lits_phantoms

    work = tmp_path_factory.mktemp("label_app")
    studies = work / "studies"
    studies.mkdir()
    vol = make_lits_phantoms(work / "phantoms", n_volumes=1, shape=(64, 64, 12), seed=0)[0]
    shutil.copy(vol, studies / "phantom.nii.gz")
    shutil.copy(real_dir / "totalseg_ct" / "ct.nii.gz", studies / "real_ct.nii.gz")
    model = _biased_joint_model(work / "model.pt")

    port = free_port()
    log = work / "server.log"
    cmd = [
        sys.executable, "-m", "monai_liver", "label-server",
        "--studies", str(studies), "--model", str(model), "--port", str(port),
        "--conf", "image_size", str(IMAGE_SIZE), "--conf", "epochs", "1", "--conf", "batch_size", "4",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false"}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=work, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url + "/info/", proc, log)
        yield {"url": url, "studies": studies, "work": work, "log": log, "phantom_label": Path(str(vol).replace("volume-", "segmentation-"))}
    finally:
        stop_server(proc, port)


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


def _post(url: str, body: dict | None = None, timeout: float = 300) -> tuple[bytes, str]:
    data = json.dumps(body or {}).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read(), r.headers.get("Content-Type", "")


def _infer(server: dict, image_id: str, tmp_path: Path) -> tuple[dict, Path]:
    """POST /infer/joint?image=<id>&output=all -> (params JSON, mask file)."""
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    body, ctype = _post(f"{server['url']}/infer/joint?image={image_id}&output=all")
    params, mask = None, None
    for part in MultipartDecoder(body, ctype).parts:
        disposition = part.headers.get(b"Content-Disposition", b"").decode()
        if 'name="params"' in disposition:
            params = json.loads(part.content)
        elif 'name="image"' in disposition:
            mask = tmp_path / f"{image_id}_mask.nii.gz"
            mask.write_bytes(part.content)
    assert params is not None and mask is not None, ctype
    return params, mask


def test_info(label_server) -> None:
    info = _get(label_server["url"] + "/info/")
    assert info["name"] == "monai_liver"
    model = info["models"]["joint"]
    assert model["labels"] == {"liver": 1, "cyst": 2, "hemangioma": 3, "metastasis": 4}
    assert model["classes"] == CLASSES and model["dimension"] == 3 and model["image_size"] == IMAGE_SIZE
    assert "joint" in info["trainers"] and "random" in info["strategies"]
    assert info["datastore"]["total"] == 2


@pytest.mark.parametrize("image_id", ["phantom", "real_ct"])
def test_infer_geometry_and_class(label_server, image_id, tmp_path) -> None:
    import nibabel as nib

    params, mask_file = _infer(label_server, image_id, tmp_path)
    study = nib.load(str(label_server["studies"] / f"{image_id}.nii.gz"))
    mask = nib.load(str(mask_file))
    # geometry: the study's array shape and affine, voxel for voxel
    assert mask.shape == study.shape
    np.testing.assert_allclose(mask.affine, study.affine, atol=1e-4)
    m = np.asarray(mask.dataobj)
    ct = np.asarray(study.dataobj, dtype=np.float32)
    from scipy import ndimage

    comps, _ = ndimage.label(ct > -500, np.ones((3, 3, 3), bool))
    body = comps == np.bincount(comps[comps > 0]).argmax()  # the cascade's liver: the body's largest piece
    assert m[~body].max() == 0, "label outside the body"
    favoured = 2 + CLASSES.index(FAVOURED)
    px_mm2 = float(np.linalg.norm(study.affine[:3, 0]) * np.linalg.norm(study.affine[:3, 1]))
    segmented = [z for z in range(ct.shape[2]) if body[:, :, z].sum() * px_mm2 >= 100.0]
    assert segmented
    for z in segmented:  # the biased network calls every body voxel hemangioma, in the study's own voxel order
        assert (m[:, :, z][body[:, :, z]] == favoured).all(), z
    # class fields
    assert params["lesion_class"] == FAVOURED
    assert 0.9 < params["lesion_probability"] <= 1.0
    assert set(params["class_probabilities"]) == set(CLASSES)
    assert abs(sum(params["class_probabilities"].values()) - 1.0) < 1e-3
    assert params["labels"] == {"background": 0, "liver": 1, "cyst": 2, "hemangioma": 3, "metastasis": 4}
    assert params["lesion"] == [2, 3, 4]
    assert params["lesion_voxels"] == int((m >= 2).sum()) == params["voxels_per_class"][FAVOURED]
    assert len(params["lesion_slices"]) == len(segmented) == params["slices_segmented"]
    assert all(s["lesion_class"] == FAVOURED for s in params["lesion_slices"])


def test_cli_and_label_app_give_the_same_masks(label_server, tmp_path) -> None:
    """One predictor: ``monai-liver infer`` with the served model gives the app's label map
    (app: 1 liver, 2 + k type k; infer: liver mask, lesion 1 + k)."""
    import nibabel as nib

    from monai_liver.cli import main

    _, mask_file = _infer(label_server, "phantom", tmp_path)
    app = np.asarray(nib.load(str(mask_file)).dataobj)
    model = label_server["studies"] / ".monai_liver_label" / "app" / "model" / "joint" / "models" / "model.pt"
    assert main(["infer", str(label_server["studies"] / "phantom.nii.gz"), "--model", str(model), "--out",
                 str(tmp_path / "cli"), "--image-size", str(IMAGE_SIZE), "--device", "cpu", "--no-overlays"]) == 0
    liver = np.asarray(nib.load(str(tmp_path / "cli" / "liver.nii.gz")).dataobj)
    lesion = np.asarray(nib.load(str(tmp_path / "cli" / "lesion.nii.gz")).dataobj)
    np.testing.assert_array_equal(app >= 1, liver > 0)
    np.testing.assert_array_equal(np.where(app >= 2, app - 1, 0), lesion)


def test_infer_lesion_union(label_server, tmp_path) -> None:
    import nibabel as nib
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    fields = {"params": json.dumps({"lesion_union": True})}
    import requests

    r = requests.post(f"{label_server['url']}/infer/joint?image=phantom&output=all", data=fields, timeout=300)
    assert r.status_code == 200, r.text[:500]
    parts = {p.headers[b"Content-Disposition"].decode(): p.content for p in MultipartDecoder(r.content, r.headers["Content-Type"]).parts}
    params = json.loads(next(v for k, v in parts.items() if 'name="params"' in k))
    mask_bytes = next(v for k, v in parts.items() if 'name="image"' in k)
    (tmp_path / "m.nii.gz").write_bytes(mask_bytes)
    m = np.asarray(nib.load(str(tmp_path / "m.nii.gz")).dataobj)
    assert set(np.unique(m)) <= {0, 2} and (m == 2).any()
    assert params["labels"] == {"background": 0, "liver": 1, "lesion": 2} and params["lesion"] == [2]


def test_next_sample(label_server) -> None:
    body, _ = _post(label_server["url"] + "/activelearning/random", {})
    assert json.loads(body)["id"] in {"phantom", "real_ct"}


def test_path_tricks_and_model_upload_are_refused(label_server, tmp_path) -> None:
    """The requests that once read, wrote or deleted files outside the studies folder, or replaced
    the served model, are answered 400 / 403 / 404 before MONAI Label sees them; nothing changes."""
    import requests

    url = label_server["url"]
    victim = label_server["work"] / "victim"
    victim.mkdir(exist_ok=True)
    precious = victim / "precious.nii.gz"
    precious.write_bytes(b"precious")
    outside = tmp_path / "outside"
    served = label_server["studies"] / ".monai_liver_label" / "app" / "model" / "joint" / "models" / "model.pt"
    before = {p: p.read_bytes() for p in (precious, served)}

    def elsewhere() -> dict:  # every file of the test's folder outside the studies folder (server log aside)
        return {p: p.read_bytes() for p in label_server["work"].rglob("*")
                if p.is_file() and label_server["studies"] not in p.parents and p != label_server["log"]}

    tree = elsewhere()
    blob = {"file": ("x.nii.gz", b"not a study")}
    cases = [
        ("put", "/datastore/image?image=../victim/precious", blob, 400),
        ("delete", "/datastore/image?id=../victim/precious", None, 400),
        ("put", f"/datastore/label?image=phantom&tag=../../../../..{outside}", {"label": ("l.nii.gz", b"x")}, 400),
        ("put", f"/datastore/image?image=../../..{outside}", blob, 400),
        ("post", f"/infer/joint?image={label_server['studies'] / 'phantom.nii.gz'}", None, 400),
        ("post", "/infer/joint?image=no_such_study", None, 404),
        ("put", "/model/joint", {"file": ("model.pt", b"evil")}, 403),
        ("get", "/proxy/dicom/studies", None, 404),
    ]
    for method, path, files, status in cases:
        r = getattr(requests, method)(url + path, files=files, timeout=60)
        assert r.status_code == status, (method, path, r.status_code, r.text[:300])
    assert _get(url + "/info/")["name"] == "monai_liver"  # still serving
    assert {p: p.read_bytes() for p in before} == before and not outside.exists()
    assert elsewhere() == tree  # nothing appeared or changed outside the studies (and app) folder


def test_guard_rules_and_token() -> None:
    from monai_liver.label_app.guard import check_request

    ids = lambda: ["phantom"]  # noqa: E731
    ok = {"authorization": "Bearer s3cret-s3cret-s3cret"}
    assert check_request("GET", "/info/", {}, {}, "s3cret-s3cret-s3cret", ids)[0] == 401
    assert check_request("GET", "/info/", {}, {"authorization": "Bearer wrong"}, "s3cret-s3cret-s3cret", ids)[0] == 401
    assert check_request("GET", "/info/", {}, ok, "s3cret-s3cret-s3cret", ids) is None
    assert check_request("POST", "/infer/joint", {"image": ["phantom"]}, ok, "s3cret-s3cret-s3cret", ids) is None
    assert check_request("PUT", "/datastore/image", {"image": ["new_study"]}, {}, None, ids) is None  # adds a study
    assert check_request("GET", "/datastore/image", {"image": [".."]}, {}, None, ids)[0] == 400
    assert check_request("POST", "/infer/..%2f..", {}, {}, None, ids)[0] == 400


def test_server_off_loopback_needs_a_token(tmp_path, capsys) -> None:
    from monai_liver.cli import main

    args = ["label-server", "--studies", str(tmp_path / "studies"), "--dryrun"]
    assert main([*args, "--host", "0.0.0.0"]) == 2
    assert "needs --token-file" in capsys.readouterr().err
    short = tmp_path / "token"
    short.write_text("abc\n")
    assert main([*args, "--host", "0.0.0.0", "--token-file", str(short)]) == 2
    assert "at least 16 characters" in capsys.readouterr().err


def test_train_fine_tunes_served_model(label_server, tmp_path) -> None:
    """Annotate the phantom (its lesions typed metastasis: value 4), train one epoch, and check the
    served model was replaced by the fine-tuned one."""
    import nibabel as nib
    import requests
    import torch

    seg = nib.load(str(label_server["phantom_label"]))
    lab = np.asarray(seg.dataobj).astype(np.uint8)
    assert (lab == 2).any(), "phantom without lesion"
    lab[lab == 2] = 2 + CLASSES.index("metastasis")
    label_file = tmp_path / "phantom_label.nii.gz"
    nib.save(nib.Nifti1Image(lab, seg.affine), str(label_file))
    with open(label_file, "rb") as f:
        r = requests.put(
            f"{label_server['url']}/datastore/label?image=phantom&tag=final",
            files={"label": ("phantom.nii.gz", f)}, timeout=60,
        )
    assert r.status_code == 200, r.text[:500]
    assert _get(label_server["url"] + "/info/")["datastore"]["completed"] == 1

    served = label_server["studies"] / ".monai_liver_label" / "app" / "model" / "joint" / "models" / "model.pt"
    before = torch.load(served, map_location="cpu", weights_only=True)["model"]
    body, _ = _post(label_server["url"] + "/train/joint?enqueue=false", {"max_epochs": 1, "device": "cpu"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = _get(label_server["url"] + "/train/?all=false&check_if_running=false")
        if status.get("status") in ("DONE", "ERROR"):
            break
        time.sleep(2)
    assert status.get("status") == "DONE", json.dumps(status)[-3000:] + label_server["log"].read_text()[-3000:]
    after = torch.load(served, map_location="cpu", weights_only=True)["model"]
    assert after.keys() == before.keys()
    assert any(not torch.equal(after[k], before[k]) for k in before), "the served model did not change"
    stats = _get(label_server["url"] + "/info/")["train_stats"]["joint"]
    assert stats["epochs"] == 1 and stats["held_out_fold"] == -1


# ------------------------------------------------------------------ without a server


def test_cli_rejects_bad_model(tmp_path, capsys) -> None:
    from monai_liver.cli import main

    bad = tmp_path / "model.pt"
    bad.write_text("not a checkpoint")
    assert main(["label-server", "--studies", str(tmp_path / "studies"), "--model", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: {bad}: not a readable PyTorch checkpoint (UnpicklingError)"
    assert main(["label-server", "--studies", str(tmp_path / "studies"), "--bundle", str(tmp_path)]) == 2
    assert "not a joint bundle (configs/metadata.json is missing)" in capsys.readouterr().err


def test_cli_rejects_a_contradicting_size(tmp_path, capsys) -> None:
    """A model that records its size (64) served with --conf image_size 32: one line, before serving."""
    import torch

    from monai_liver.cli import main
    from monai_liver.model_package import model_settings
    from monai_liver.networks.factory import build_network

    model = tmp_path / "model.pt"
    torch.save({"model": build_network("joint", backbone="basicunet").state_dict(),
                "settings": model_settings("joint", 64, "basicunet", CLASSES)}, model)
    args = ["label-server", "--studies", str(tmp_path / "studies"), "--model", str(model), "--dryrun"]
    assert main([*args, "--conf", "image_size", "32"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("trained at image size 64, not 32; leave the size out to use the model's")


def test_labelled_studies_to_datalist(tmp_path) -> None:
    """Label values 0 / 1 / 2 + k become manifest items (one per lesion slice, RAS slice index,
    majority type); a value above 1 + K is refused naming the file."""
    import nibabel as nib

    from monai_liver.errors import LiverError
    from monai_liver.label_app.train import labelled_studies_to_datalist

    affine = np.diag([-1.0, -1.0, 2.0, 1.0])  # LPS voxel order: x and y flip, z kept
    img = np.full((16, 16, 4), 40, np.int16)
    lab = np.zeros((16, 16, 4), np.uint8)
    lab[2:14, 2:14, :] = 1
    lab[4:8, 4:8, 1] = 2  # cyst on slice 1
    lab[4:6, 4:6, 3] = 3  # hemangioma and a larger metastasis on slice 3
    lab[8:12, 8:12, 3] = 4
    studies = []
    for sid in ("a", "b"):
        nib.save(nib.Nifti1Image(img, affine), str(tmp_path / f"{sid}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, affine), str(tmp_path / f"{sid}_label.nii.gz"))
        studies.append({"image": str(tmp_path / f"{sid}.nii.gz"), "label": str(tmp_path / f"{sid}_label.nii.gz")})
    path, fold = labelled_studies_to_datalist(studies, tmp_path / "out", CLASSES, n_folds=5)
    dl = json.loads(path.read_text())
    assert fold == 0 and dl["classes"] == CLASSES and dl["n_folds"] == 2
    items = dl["training"]
    assert [(it["patient_id"], it["slice"], it["label"]) for it in items] == [
        ("a", 1, "cyst"), ("a", 3, "metastasis"), ("b", 1, "cyst"), ("b", 3, "metastasis")
    ]
    assert {it["fold"] for it in items if it["patient_id"] == "a"} != {it["fold"] for it in items if it["patient_id"] == "b"}
    lesion = np.asarray(nib.load(items[1]["lesion"]).dataobj)
    assert set(np.unique(lesion)) == {0, 1, 2, 3}  # class ids 1..K
    assert (np.asarray(nib.load(items[1]["liver"]).dataobj) == (lab >= 1)).all()

    lab[0, 0, 0] = 5  # 1 + K + 1
    nib.save(nib.Nifti1Image(lab, affine), str(tmp_path / "a_label.nii.gz"))
    with pytest.raises(LiverError, match=r"a_label.nii.gz: label value 5 is not allowed"):
        labelled_studies_to_datalist(studies, tmp_path / "out2", CLASSES)


def test_model_upload_check(tmp_path) -> None:
    """--allow-model-upload: only a weights-only checkpoint that fits the served network passes."""
    import io

    import torch

    from monai_liver.constants import bundles_dir
    from monai_liver.label_app.guard import check_model_upload
    from monai_liver.networks.factory import build_network

    served = str(bundles_dir() / "joint" / "models" / "model.pt")  # the app's layout: <bundle>/models/model.pt

    def saved(obj) -> bytes:
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()

    assert check_model_upload(saved({"model": build_network("joint").state_dict()}), served) is None
    assert "does not fit" in check_model_upload(saved({"model": build_network("lits_pretrain").state_dict()}), served)
    assert "cannot read the checkpoint" in check_model_upload(b"evil bytes", served)

    class Payload:  # pickled code: refused by weights_only=True, never run
        def __reduce__(self):
            return (print, ("pwned",))

    assert "cannot read the checkpoint" in check_model_upload(saved({"model": Payload()}), served)


def test_guard_hands_a_checked_upload_on_unchanged(tmp_path) -> None:
    """The ASGI path of --allow-model-upload: a bad file is answered 400 by the guard; a good one
    reaches the app with its body intact."""
    import io

    import torch
    from starlette.testclient import TestClient

    from monai_liver.constants import bundles_dir
    from monai_liver.label_app.guard import RequestGuard, _buffered
    from monai_liver.networks.factory import build_network

    received = {}

    async def inner(scope, receive, send):  # stands in for MONAI Label: keeps the body it gets
        if scope["type"] != "http":
            return
        received[scope["path"].rsplit("/", 1)[-1]] = await _buffered(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    served = str(bundles_dir() / "joint" / "models" / "model.pt")
    app = RequestGuard(inner, allow_model_upload=True, study_ids=lambda: [], served_model=lambda: served)
    buf = io.BytesIO()
    torch.save({"model": build_network("joint").state_dict()}, buf)
    client = TestClient(app)  # no lifespan: the stand-in app has none
    assert client.put("/model/joint", files={"file": ("m.pt", b"evil")}).status_code == 400
    assert not received
    r = client.put("/model/joint", files={"file": ("m.pt", buf.getvalue())})
    assert r.status_code == 200, r.text
    assert buf.getvalue() in received["joint"]  # the multipart body, file bytes intact
    blocked = RequestGuard(inner, study_ids=lambda: [], served_model=lambda: served)
    assert TestClient(blocked).put("/model/joint", files={"file": ("m.pt", buf.getvalue())}).status_code == 403
