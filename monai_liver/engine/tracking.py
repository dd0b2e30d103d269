"""MLflow helpers for the bundles' ``--tracking mlflow``.

MONAI's tracking patch (``monai/bundle/workflows.py``, ``ConfigWorkflow.patch_bundle_tracking``)
appends an ``MLFlowHandler`` to ``train#handlers`` and ``validate#handlers`` and adds the settings'
top-level ids (``tracking_uri``, ``experiment_name``, ``run_name``...) only where the bundle does not
define them. Our ``train.json`` defines them: ``tracking_uri`` defaults to
:func:`default_tracking_uri` (a SQLite store next to the run; MLflow 3.13+ refuses the ``./mlruns``
file store), ``run_name`` to :func:`run_name`; both can be overridden on the command line
(``--tracking_uri http://host:5000``). ``initialize`` then calls :func:`configure_mlflow`, which
gives the handlers the run's parameters, adds the checkpoint and training log as artifacts and
checks that an ``http(s)://`` server answers before training starts.
"""

from __future__ import annotations

import glob
import os
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_liver.errors import LiverError

__all__ = ["default_tracking_uri", "artifact_location", "run_name", "check_tracking_uri", "configure_mlflow", "training_loss", "PARAM_NAMES"]

#: parameters every training run logs.
PARAM_NAMES: tuple[str, ...] = ("strategy", "init", "fold", "epochs", "lr", "batch_size", "image_size", "seed")


def default_tracking_uri(output_dir: str | Path) -> str:
    """``sqlite:///<absolute output_dir>/mlflow.db`` (the folder is created)."""
    path = Path(output_dir).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return "sqlite:///" + (path / "mlflow.db").as_posix()


def artifact_location(tracking_uri: str) -> str | None:
    """Where a new MLflow experiment keeps its artifacts: ``file://<folder of the SQLite file>/mlruns``
    for a ``sqlite:///`` store, as MONAI's ``MLFlowHandler`` chooses for the experiments it creates
    (MLflow's own default is ``./mlruns`` under whatever directory the command was started in);
    None (the server decides) for any other store."""
    uri = str(tracking_uri)
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):])
    return (db.parent / "mlruns").resolve().as_uri()


def run_name(strategy: str, init: str, fold: int | str) -> str:
    """Default MLflow run name: ``<strategy>-<init>-fold<k>`` (e.g. ``joint-lits-fold0``)."""
    return f"{strategy}-{init}-fold{fold}"


def check_tracking_uri(uri: str, timeout: float = 5.0) -> str:
    """Fail early (LiverError) when ``uri`` is an ``http(s)://`` MLflow server that does not answer;
    other URIs (sqlite, databricks, ...) are returned unchanged. Any HTTP answer counts as reachable."""
    uri = str(uri)
    if not uri.startswith(("http://", "https://")):
        if uri.startswith("file:") or "://" not in uri:
            raise LiverError(
                f"{uri}: MLflow no longer accepts a file store as tracking URI; use sqlite:///<path>/mlflow.db or http://host:port"
            )
        return uri
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            pass
    except urllib.error.HTTPError:
        pass  # the server answered (e.g. 404 from a proxy): reachable
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise LiverError(f"{uri}: MLflow tracking server is not reachable ({reason})") from None
    return uri


def training_loss(output: Any) -> Any:
    """The loss of a trainer's ``engine.state.output``: a batch dict ``{"loss": tensor, ...}`` or a
    list of decollated dicts (the loss of the first)."""
    if isinstance(output, Mapping):
        return output["loss"]
    if isinstance(output, Sequence) and output and isinstance(output[0], Mapping):
        return output[0]["loss"]
    return output


def configure_mlflow(
    handlers: Sequence[Any] | None,
    params: Mapping[str, Any] | None = None,
    artifacts: Sequence[str | Path] = (),
    output_dir: str | Path | None = None,
) -> int:
    """Prepare the ``MLFlowHandler`` objects that ``--tracking mlflow`` added to ``handlers``.

    Sets their ``experiment_param`` (logged when the run starts), appends ``artifacts`` (e.g. the
    ``model.pt`` path, logged when training completes; missing files are skipped), adds the executed
    config MONAI saves into ``output_dir`` (``config_*.json``), and checks an ``http(s)://`` tracking
    server is reachable. The loss transform of MONAI's default settings,
    ``from_engine(['loss'], first=True)``, expects decollated engine outputs and returns a tuple for
    our batch dicts (``decollate=False``), which MLflow cannot log: it is replaced by
    :func:`training_loss`. Their logging per iteration is switched off: MLflow writes each logged
    value to its store at once, and into a SQLite store one iteration's loss took about 30 ms, about
    10 s of a 20-epoch quick-preset run whose training took 26 s (cProfile); the loss is logged once
    per epoch instead (``train_loss``, the epoch's mean, from
    :class:`~monai_liver.engine.handlers.EpochLogger`), which also spares a GPU run a host sync per
    iteration. Returns the number of MLflow handlers found (0 without ``--tracking``).
    """
    from monai.handlers import MLFlowHandler

    found = [h for h in (handlers or []) if isinstance(h, MLFlowHandler)]
    for h in found:
        check_tracking_uri(getattr(h.client, "tracking_uri", "") or "sqlite:///")
        h.output_transform = training_loss
        h.iteration_log = False
        if params:
            h.experiment_param = {**(h.experiment_param or {}), **{k: str(v) for k, v in params.items()}}
        extra = [str(a) for a in artifacts]
        if output_dir is not None:
            extra += sorted(glob.glob(os.path.join(str(output_dir), "config_*.json")))
        # MONAI's default artifact for the executed config is "<output_dir> + '/config_...'" as one
        # literal string when output_dir is overridden with a plain path: keep only real paths.
        current = [str(a) for a in h.artifacts if a]
        # (MONAI's handler skips artifact paths that do not exist when training completes)
        h.artifacts = tuple(dict.fromkeys([a for a in current if os.path.exists(a)] + extra))
    return len(found)

