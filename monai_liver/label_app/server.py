"""``monai-liver label-server``: start MONAI Label with the joint bundle for annotators.

A thin wrapper over ``monailabel start_server``. It prepares a working app folder (MONAI Label writes
``model/``, ``logs/``, ``lib/`` and ``bin/`` into its app folder, so the app is never run from the
installed package itself)::

    <workdir>/app/main.py                  one line: imports LiverLabelApp from monai_liver.label_app.main
    <workdir>/app/model/joint/configs/     a copy of the joint bundle's configs (refreshed at each start)
    <workdir>/app/model/joint/models/model.pt   the model being served and fine-tuned

and runs MONAI Label's own ``start_server`` in this process, bound to 127.0.0.1 unless ``--host``
says otherwise. ``<workdir>`` defaults to ``<studies>/.monai_liver_label`` (MONAI Label lists only the
top level of the studies folder, so the working folder never shows up as a study).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from pathlib import Path

from monai_liver.errors import LiverError

__all__ = ["MODEL_NAME", "APP_MAIN", "default_bundle", "prepare_app_dir", "start_server_args", "add_arguments", "main"]

#: the name of the infer and train tasks (``/infer/joint``, ``/train/joint``)
MODEL_NAME = "joint"

#: the app folder's main.py: MONAI Label loads it by path and looks for a MONAILabelApp subclass.
APP_MAIN = '''"""MONAI Label app folder written by `monai-liver label-server`; the app lives in monai_liver."""

from monai_liver.label_app.main import LiverLabelApp  # noqa: F401
'''

logger = logging.getLogger(__name__)


def default_bundle() -> Path:
    """``bundles/joint`` of the source tree (the package is installed editable, in Docker too)."""
    return Path(__file__).resolve().parents[2] / "bundles" / MODEL_NAME


def _check_model(model: Path) -> None:
    """Raise LiverError unless ``model`` is a checkpoint ``{"model": state_dict}`` (loaded weights-only)."""
    import torch

    if model.is_dir():
        from monai_liver.model_package import package_files

        model = package_files(model)[0]
    if not model.is_file():
        raise LiverError(f"{model}: model file not found (expected a joint bundle checkpoint, e.g. <run>/model.pt)")
    try:
        ckpt = torch.load(model, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file; the message names the file
        raise LiverError(f"{model}: not a readable PyTorch checkpoint ({type(e).__name__})") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise LiverError(f"{model}: checkpoint has no 'model' state dict (expected a bundle's model.pt)")


def prepare_app_dir(workdir: str | os.PathLike, bundle: str | os.PathLike, model: str | os.PathLike | None = None) -> Path:
    """Write the MONAI Label app folder ``<workdir>/app`` (see the module doc); return it.

    Args:
        workdir: working folder (created).
        bundle: the joint bundle folder (``configs/inference.json``, ``train.json``, ``metadata.json``).
        model: checkpoint to serve (copied to ``models/model.pt``); None keeps the one the app folder
            has (the result of earlier fine-tuning), if any.
    """
    bundle = Path(bundle)
    for name in ("metadata.json", "inference.json", "train.json"):
        if not (bundle / "configs" / name).is_file():
            raise LiverError(f"{bundle}: not a joint bundle (configs/{name} is missing)")
    if model is not None:
        _check_model(Path(model))
    app = Path(workdir) / "app"
    target = app / "model" / MODEL_NAME
    (target / "models").mkdir(parents=True, exist_ok=True)
    (app / "main.py").write_text(APP_MAIN)
    if (target / "configs").exists():
        shutil.rmtree(target / "configs")
    shutil.copytree(bundle / "configs", target / "configs")
    if (bundle / "docs").is_dir() and not (target / "docs").exists():
        shutil.copytree(bundle / "docs", target / "docs")
    if model is not None:
        from monai_liver.atomic import copy_file
        from monai_liver.model_package import LOCALISER_FILE, package_files

        model_file, localiser = package_files(model)  # a package folder brings its liver localiser
        for src, name in ((model_file, "model.pt"), (localiser, LOCALISER_FILE)):
            if src is None:  # no localiser given: none left from an earlier package either
                (target / "models" / name).unlink(missing_ok=True)
                continue
            copy_file(src, target / "models" / name)  # atomic: a running server never reads half a file
    return app


def read_token(path: str | os.PathLike) -> str:
    """The shared secret in ``path`` (surrounding whitespace removed); LiverError when missing or short."""
    path = Path(path)
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise LiverError(f"{path}: cannot read the token file ({e.strerror or e})") from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise LiverError(f"{path}: the token must be one word of at least 16 characters")
    return token


def start_server_args(
    app: str | os.PathLike,
    studies: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    conf: dict[str, str] | None = None,
) -> list[str]:
    """The ``monailabel start_server`` argument list for the app folder."""
    args = ["start_server", "--app", str(app), "--studies", str(studies), "--host", host, "--port", str(port),
            "--uvicorn_app", "monai_liver.label_app.guard:app"]  # MONAI Label's app behind the request guard
    for key, value in (conf or {}).items():
        args += ["--conf", str(key), str(value)]
    return args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--studies", required=True, help="folder of CT studies (*.nii.gz); labels go to <studies>/labels/")
    parser.add_argument(
        "--model",
        default=None,
        help="joint model to serve: a package folder (model.pt + liver_model.pt, e.g. <experiment>/packages/joint-lits) "
        "or a checkpoint (model.pt with a 'model' state dict); "
        "default: the model already in the working folder (from earlier fine-tuning), if any",
    )
    parser.add_argument("--bundle", default=None, help="joint bundle folder (default: bundles/joint of the source tree)")
    parser.add_argument("--workdir", default=None, help="working folder (default: <studies>/.monai_liver_label)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1; anything else needs --token-file)")
    parser.add_argument("--allow-model-upload", action="store_true",
                        help="let PUT /model/joint replace the served model, with a checkpoint that loads "
                        "(weights only) into the served network; off by default")
    parser.add_argument("--token-file", default=None, help="file holding a shared secret (at least 16 characters): every "
                        "request must then send 'Authorization: Bearer <secret>'; required unless --host is a loopback address")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--conf",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="app setting, repeatable: epochs, image_size, batch_size, val_split, tracking, tracking_uri, preload",
    )
    parser.add_argument("--dryrun", action="store_true", help="prepare the app folder and check the settings; do not serve")


def main(args: argparse.Namespace) -> int:
    studies = Path(args.studies)
    if studies.exists() and not studies.is_dir():
        raise LiverError(f"{studies}: --studies must be a folder of CT studies")
    if not 0 < int(args.port) < 65536:
        raise LiverError(f"--port {args.port}: not a TCP port (1..65535)")
    token = read_token(args.token_file) if args.token_file else None
    if token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        raise LiverError(f"--host {args.host}: a server others can reach needs --token-file (a shared secret), "
                         "or MONAI Label's Keycloak settings behind a proxy; see README 'Security'")
    from monai_liver.label_app.guard import TOKEN_ENV, UPLOAD_ENV

    os.environ.pop(TOKEN_ENV, None)
    if token:
        os.environ[TOKEN_ENV] = token  # read by the guard (monai_liver.label_app.guard) in this process
    os.environ[UPLOAD_ENV] = "1" if args.allow_model_upload else "0"
    from monai_liver.label_app import compat

    compat.install()  # before MONAI Label's app is imported (uvicorn imports it in this process)
    try:
        from monailabel.main import Main
    except ModuleNotFoundError as e:
        raise LiverError(f"monailabel: not installed ({e}); install the label extra: pip install -e '.[label]'") from e

    studies.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir) if args.workdir else studies / ".monai_liver_label"
    bundle = Path(args.bundle) if args.bundle else default_bundle()
    app = prepare_app_dir(workdir, bundle, args.model)
    if not (app / "model" / MODEL_NAME / "models" / "model.pt").is_file():
        logger.warning("no model yet: /infer is unavailable until a model is given (--model) or trained (/train/joint)")
    conf = {str(k): str(v) for k, v in args.conf}
    served = app / "model" / MODEL_NAME / "models" / "model.pt"
    if served.is_file():  # the model is checked now, not at the first /infer: one line, before serving
        from monai_liver.inference.model import load_model

        model = load_model(served, app / "model" / MODEL_NAME, "cpu",
                           image_size=int(conf["image_size"]) if conf.get("image_size") else None)
        if model.strategy != "joint":
            raise LiverError(f"{args.model or served}: the label server serves a joint model, not {model.strategy}")
    argv = start_server_args(app.resolve(), studies.resolve(), args.host, int(args.port), conf)
    if args.dryrun:
        argv.append("--dryrun")
    ml = Main(actions=("start_server",))
    ml_args = ml.args_parser("monai-liver label-server").parse_args(argv)
    cwd = os.getcwd()
    if args.dryrun:  # MONAI Label's dry run writes a .env file into the current folder
        os.chdir(app)
    # MONAI Label's temporary files (uploads, results, its logging config) go to <workdir>/tmp,
    # emptied at start and at exit, instead of piling up in the system's /tmp
    import tempfile

    tmp = Path(workdir) / "tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = str(tmp.resolve()), str(tmp.resolve())
    try:
        ml.action_start_server(ml_args)  # uvicorn, in this process, until interrupted
    finally:
        os.chdir(cwd)
        if saved[0] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[0]
        tempfile.tempdir = saved[1]
        shutil.rmtree(tmp, ignore_errors=True)
    return 0
