"""``monai-liver experiment``: every strategy x init x fold through the bundles, then the table.

Stages (each timed and printed), driven by :func:`run_experiment` with one
:class:`~monai_liver.experiment.settings.ExperimentSettings`:

1. data (:mod:`~monai_liver.experiment.data`): the LiTS datalist (``--lits-datalist``, a ``--lits``
   folder, or LiTS-like phantoms) and the lesion-type datalist (``--datalist``, a ``--manifest``, or
   lesion-type phantoms), written to ``<out>/data_lists/`` with ``--folds`` patient-grouped folds;
   ``<out>/experiment.json`` records the settings (a resumed folder must keep them);
2. the MLflow parent run (:mod:`~monai_liver.experiment.mlflow_parent`) and the ImageNet weights
   (:mod:`~monai_liver.experiment.imagenet`; when there are none the ImageNet rows are reported as
   not run, with the reason, and the rest proceeds);
3. the runs (:mod:`~monai_liver.experiment.runs`, executed by :mod:`~monai_liver.experiment.executors`):
   ``lits_pretrain`` and the liver localiser once (only when the ``lits`` init is asked for), into
   ``<out>/pretrain/``; for each strategy x init x fold a bundle run
   (:mod:`~monai_liver.experiment.bundle_run`) with ``train.json``, then with ``train.json`` +
   ``evaluate.json``, into ``<out>/runs/<strategy>/<init>/fold<k>``;
4. a model package per row (:mod:`~monai_liver.experiment.packages`) and
   :func:`~monai_liver.experiment.report.build_report`: ``results.csv``, ``results.md``,
   ``per_slice.csv``, ``report.html``.

Resuming: a run whose folder holds ``DONE`` (written atomically after its evaluation) is never run
again; an interrupted training resumes from the bundle's ``checkpoint_last.pt``. Run the same
command again to continue. ``<out>/runs.log`` records every start and finish. One experiment
process works in a folder at a time (``<out>/.lock``); SIGTERM / Ctrl-C stop the bundle now running.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai_liver.atomic import write_text
from monai_liver.constants import PRETRAIN_STRATEGY, bundles_dir
from monai_liver.errors import LiverError
from monai_liver.experiment.settings import ExperimentSettings

__all__ = ["ExperimentResult", "run_experiment", "run_settings"]


@dataclass
class ExperimentResult:
    """What :func:`run_experiment` produced."""

    out: Path
    results_csv: Path
    results_md: Path
    per_slice_csv: Path
    report_html: Path
    table_markdown: str
    times: dict[str, float] = field(default_factory=dict)
    runs_done: int = 0  #: runs trained + evaluated by this call
    runs_skipped: int = 0  #: runs already finished before this call
    not_run: dict[str, str] = field(default_factory=dict)  #: init -> reason


def _print(msg: str) -> None:
    print(msg, flush=True)


def run_experiment(out: str | Path, preset: str | None = "quick", *, log: Callable[[str], None] = _print,
                   **given: Any) -> ExperimentResult:
    """Run (or resume) the whole experiment in ``out``; see the module doc. Returns the paths and
    the results table (markdown).

    ``given``: any field of :class:`~monai_liver.experiment.settings.ExperimentSettings` (``folds``,
    ``epochs``, ``image_size``, ``strategies``, ``datalist``, ``tracking``, ``executor``, ...); those
    left out or None come from ``preset`` (``"quick"`` / ``"full"``).

    ``phantoms``: say in the table and report that the lesion-type data are phantoms (automatic when
    this call generates them; pass True for phantoms made beforehand, as the demo does).

    ``executor``: ``"local"`` (one run after another here) or ``"ray"`` (each run a Ray task on the
    cluster at ``ray_address``, ``ray_cpus`` CPUs or one GPU each, retried ``ray_max_retries`` times
    when its node dies); see :mod:`monai_liver.experiment.executors`.

    Raises LiverError for bad options or data, a failed bundle run (naming its log), or a folder
    that was started with other settings.
    """
    return run_settings(out, ExperimentSettings.preset_named(preset, **given), log=log)


def run_settings(out: str | Path, settings: ExperimentSettings, log: Callable[[str], None] = _print) -> ExperimentResult:
    """:func:`run_experiment` with the settings as one record."""
    from monai_liver.experiment.bundle_run import stop_on_signals
    from monai_liver.experiment.data import check_same_data
    from monai_liver.experiment.executors import make_executor
    from monai_liver.locks import exclusive_lock

    s = settings.check()
    executor = make_executor(s.executor, address=s.ray_address, cpus=s.ray_cpus, max_retries=s.ray_max_retries,
                             device=s.device, log=log, runs_per_device=s.runs_per_device)  # before anything is written: Ray missing is one line
    bundles = bundles_dir()
    for name in [*s.strategies, PRETRAIN_STRATEGY]:
        if not (bundles / name / "configs" / "train.json").is_file():
            raise LiverError(f"{bundles / name}: bundle not found (expected configs/train.json)")

    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    with stop_on_signals(), exclusive_lock(out / ".lock", busy=f"{out}: another 'monai-liver experiment' is running in this folder"):
        fingerprint = check_same_data(out, s)  # before anything is written into the folder
        with executor:
            return _run(out, s, fingerprint, executor, log)


class _Stages:
    """Named stages, each printed and timed (``times``: name -> seconds)."""

    def __init__(self, log: Callable[[str], None]):
        self.log, self.times = log, {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.log(f"== {name}")
        t = time.perf_counter()
        yield
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t
        self.log(f"   {name}: {time.perf_counter() - t:.1f} s")


def _run(out: Path, s: ExperimentSettings, fingerprint: str | None, executor, log: Callable[[str], None]) -> ExperimentResult:
    """The stages of an experiment in ``out`` (locked, data checked): data, experiment.json, MLflow
    parent, ImageNet weights, the runs (by ``executor``), packages, report."""
    from monai_liver.engine.data import datalist_classes
    from monai_liver.experiment.data import prepare_data
    from monai_liver.experiment.executors import Progress
    from monai_liver.experiment.imagenet import imagenet_for_runs
    from monai_liver.experiment.mlflow_parent import EXPERIMENT_NAME, ParentRun, tracking_uri
    from monai_liver.experiment.report import build_report, results_table
    from monai_liver.experiment.runs import plan_runs
    from monai_liver.experiment.settings import experiment_record, resumed_record

    stages = _Stages(log)
    times = stages.times
    uri = tracking_uri(out, s)
    executor.check(out, uri)  # Ray: shared storage, a tracking store every node reaches
    with stages("data"):
        data = prepare_data(out, s, log)
    exp = experiment_record(s, data, fingerprint, datalist_classes(data.lesions))
    old = None
    with contextlib.suppress(OSError, ValueError):
        old = json.loads((out / "experiment.json").read_text())
    exp = resumed_record(out, exp, old)
    write_text(out / "experiment.json", json.dumps(exp, indent=2))

    tracker = None
    if uri:
        tracker = ParentRun(out, uri, EXPERIMENT_NAME, {k: v for k, v in exp.items() if k not in ("strategies", "inits")}
                            | {"strategies": ",".join(exp["strategies"]), "inits": ",".join(exp["inits"])}, log)
        log(f"   MLflow: {uri} (parent run {tracker.parent_id})")

    imagenet_file, not_run = imagenet_for_runs(out, s, executor.remote, log, stages)
    specs = plan_runs(out, s, data, imagenet_file, not_run, uri)
    todo = []
    for sp in specs:
        if (Path(sp.run_dir) / "DONE").is_file():
            log(f"== {sp.name}: done before ({sp.run_dir}), not run again")
        else:
            todo.append(sp)
    runs_skipped = sum(1 for sp in specs if not sp.pretrain_key) - sum(1 for sp in todo if not sp.pretrain_key)
    progress = Progress(len(specs), len(specs) - len(todo), log)
    executor.run(todo, tracker, progress)
    for r in progress.results:
        times[r["name"] if r["pretrain"] else f"[run] {r['name']}"] = r["seconds"]
    runs_done = sum(1 for r in progress.results if not r["pretrain"] and not r["skipped"])

    with stages("packages"):
        from monai_liver.experiment.packages import write_packages

        write_packages(out, log)
    with stages("report"):
        html = build_report(out, n_boot=s.n_boot)
        table = results_table(out)
    if tracker:
        tracker.finish(out)
    log("stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items() if not k.startswith("[")))
    run_total = sum(v for k, v in times.items() if k.startswith("["))
    log(f"runs: {runs_done} trained and evaluated ({run_total:.0f} s of run time), {runs_skipped} finished before")
    return ExperimentResult(out=out, results_csv=out / "results.csv", results_md=out / "results.md",
                            per_slice_csv=out / "per_slice.csv", report_html=html, table_markdown=table, times=times,
                            runs_done=runs_done, runs_skipped=runs_skipped, not_run=not_run)
