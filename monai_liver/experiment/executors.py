"""Where the runs of ``monai-liver experiment`` execute: ``--executor local`` or ``--executor ray``.

Both executors call :func:`~monai_liver.experiment.runs.execute_run`, the one code path of a run
(train, evaluate, atomic ``DONE``); the driver (:func:`~monai_liver.experiment.runner.run_experiment`)
prepares the data before and builds the table and report after, the same for both.

- :class:`LocalExecutor`: one run after another in this process (the default); with
  ``--runs-per-device K`` (or several GPUs) K runs at a time on each visible GPU, or K on the CPU,
  each slot a worker process of its own (:mod:`~monai_liver.experiment.parallel`).
- :class:`RayExecutor`: each run is one Ray task (``num_gpus=1/K`` on a cluster with GPUs, else
  ``--ray-cpus`` CPUs), the LiTS pretraining and the liver localiser too; the runs that start from
  the LiTS model wait for its task (a Ray dependency). At start the driver checks that every node
  sees ``--out`` (a marker file read by a task on each node) and that MLflow is a server when there
  is more than one node. A task whose worker or node dies is rerun by Ray (``max_retries``) and
  resumes from the run's ``checkpoint_last.pt``; Ctrl-C (or SIGTERM) cancels the outstanding tasks
  and waits for them to stop. Ray does the scheduling: nothing here queues or places runs.

:class:`Progress` prints one line per finished run (node, minutes, held-out figures) and the
runs done / total with the time left.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from monai_liver.atomic import write_text
from monai_liver.errors import LiverError
from monai_liver.experiment.parallel import device_slots

__all__ = ["LocalExecutor", "Progress", "RayExecutor", "make_executor", "RAY_INSTALL"]

#: what ``--executor ray`` says when Ray is not installed
RAY_INSTALL = "--executor ray needs Ray, which is not installed: pip install -e '.[cluster]'"


class Progress:
    """Progress of the runs: a line per finished run and ``runs done/total, time left``."""

    def __init__(self, total: int, done_before: int, log: Callable[[str], None]):
        self.total, self.done, self.log = total, done_before, log
        self.ran = 0
        self.start = time.monotonic()
        self.results: list[dict] = []

    def finished(self, r: dict) -> None:
        self.results.append(r)
        self.done += 1
        if r["skipped"]:
            self.log(f"   {r['name']}: finished by another process ({r['node']})")
        else:
            self.ran += 1
            figures = ", ".join(f"{k} {v:.3f}" for k, v in r.get("figures", {}).items()) or "no figures"
            self.log(f"   done {r['name']} on {r['node']} in {r['seconds'] / 60:.1f} min: held-out {figures}")
        left = self.total - self.done
        eta = ""
        if self.ran and left:
            eta = f", about {_duration((time.monotonic() - self.start) / self.ran * left)} left"
        self.log(f"   runs {self.done}/{self.total} done{eta}")


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.1f} min"


class LocalExecutor:
    """One run after another, in this process (``--isolation subprocess``: in its bundle subprocess);
    with more than one slot (``runs_per_device`` > 1, or several GPUs unless ``device`` is ``"cpu"``)
    that many at a time, each slot a worker process (:func:`~monai_liver.experiment.parallel.run_parallel`)."""

    remote = False  #: runs see this machine's files

    def __init__(self, runs_per_device: int = 1, device: str | None = None):
        device_slots((), runs_per_device)  # LiverError for K < 1, before anything is written
        self.runs_per_device, self.device = int(runs_per_device), device

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def check(self, out: Path, tracking_uri: str | None) -> None:
        """Nothing to check on one machine."""

    def run(self, specs: Sequence, tracker, progress: Progress) -> None:
        from monai_liver.experiment.parallel import plan_slots, run_parallel
        from monai_liver.experiment.runs import execute_run

        slots = plan_slots(self.device, self.runs_per_device) if specs else []
        if len(slots) > 1:
            run_parallel(specs, tracker, progress, slots)
            return
        node = socket.gethostname()
        for n, spec in enumerate(specs, 1):
            progress.log(f"== [{n}/{len(specs)}] {spec.name}")
            progress.finished(execute_run(spec, tracker, node))


def _import_ray():
    try:
        import ray
    except ImportError:
        raise LiverError(RAY_INSTALL) from None
    return ray


def _node_name() -> str:
    """This Ray node as the progress line shows it: host name / first 8 hex digits of the node id."""
    import ray

    return f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"


def _ray_run(spec, tracker, *after):
    """The Ray task of one run (``after``: the results of the runs it waits for)."""
    from monai_liver.experiment.runs import execute_run

    return execute_run(spec, tracker, _node_name())


def _read_marker(path: str) -> tuple[str, str | None]:
    """The Ray task of the shared-storage check: (this node, the marker's content or None)."""
    try:
        return _node_name(), Path(path).read_text()
    except OSError:
        return _node_name(), None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


class RayExecutor:
    """Each run is one Ray task on the cluster at ``address`` (see the module doc).

    ``address``: ``"auto"`` (the cluster this machine belongs to, ``RAY_ADDRESS`` or ``ray start``,
    else a new local instance), ``"local"`` (always a new local instance), or a cluster address.
    """

    remote = True  #: runs may execute on other machines

    def __init__(self, address: str = "auto", cpus: float = 1.0, max_retries: int = 3, device: str | None = None,
                 log: Callable[[str], None] = print, runs_per_device: int = 1):
        self.ray = _import_ray()
        if cpus <= 0:
            raise LiverError(f"--ray-cpus must be more than 0 (got {cpus})")
        if max_retries < 0:
            raise LiverError(f"--ray-max-retries must be 0 or more (got {max_retries})")
        #: each run's share of a GPU: K runs per GPU, Ray places them and sets CUDA_VISIBLE_DEVICES
        self.gpu_share = 1.0 / len(device_slots(("gpu",), runs_per_device))  # LiverError for K < 1
        self.address, self.cpus, self.max_retries, self.device, self.log = address or "auto", cpus, max_retries, device, log
        self.nodes: list[dict] = []

    # ------------------------------------------------------------------------------ connection

    def __enter__(self) -> RayExecutor:
        ray = self.ray
        # ray.init installs its own SIGTERM handler (sys.exit): keep the experiment's (bundle_run.stop_on_signals), which stops cleanly
        main = threading.current_thread() is threading.main_thread()
        term = signal.getsignal(signal.SIGTERM) if main else None
        quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
        try:
            if self.address == "auto":
                try:
                    ray.init(address="auto", **quiet)
                    how = "connected to the Ray cluster"
                except ConnectionError:
                    if os.environ.get("RAY_ADDRESS"):  # a cluster was named: do not fall back silently
                        raise
                    ray.init(address="local", include_dashboard=False, **quiet)
                    how = "no Ray cluster found: started a local Ray instance"
            elif self.address == "local":
                ray.init(address="local", include_dashboard=False, **quiet)
                how = "started a local Ray instance"
            else:
                ray.init(address=self.address, **quiet)
                how = "connected to the Ray cluster"
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise LiverError(f"--ray-address {self.address}: cannot connect to a Ray cluster ({_one_line(e)})") from None
        finally:
            if main and term is not None:
                signal.signal(signal.SIGTERM, term)
        self.nodes = [n for n in ray.nodes() if n.get("Alive")]
        res = ray.cluster_resources()
        self.gpus = float(res.get("GPU", 0))
        if self.device == "cuda" and not self.gpus:
            ray.shutdown()
            raise LiverError("--device cuda: the Ray cluster has no GPU (use --device cpu, or add GPU nodes)")
        self.use_gpu = self.gpus > 0 and self.device != "cpu"
        per_run = f"{self.gpu_share:.4g} GPU + {self.cpus:g} CPU" if self.use_gpu else f"{self.cpus:g} CPU"
        self.log(f"   Ray {ray.__version__}: {how} ({len(self.nodes)} node(s), {res.get('CPU', 0):g} CPUs, "
                 f"{self.gpus:g} GPUs); {per_run} per run, {self.max_retries} retries")
        return self

    def __exit__(self, *exc) -> None:
        self.ray.shutdown()

    # ---------------------------------------------------------------------------------- checks

    def check(self, out: Path, tracking_uri: str | None) -> None:
        """LiverError unless every node sees ``out``, and unless MLflow is a server when the cluster
        has more than one node (SQLite is a file on one machine)."""
        if tracking_uri is not None and len(self.nodes) > 1:
            scheme = tracking_uri.split("://", 1)[0] if "://" in tracking_uri else ""
            if scheme in ("", "file", "sqlite"):
                raise LiverError(f"--executor ray on {len(self.nodes)} nodes cannot use the MLflow store {tracking_uri} "
                                 "(a file on one machine): pass --tracking-uri http://HOST:5000 (an MLflow server every "
                                 "node reaches, see the README) or --no-tracking")
        self.check_shared_storage(out)

    def check_shared_storage(self, out: Path, timeout: float = 300.0) -> None:
        """A marker file written here, read by one task pinned to each node."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self.ray
        token = uuid.uuid4().hex
        marker = Path(out) / f".shared-check-{token[:8]}"
        write_text(marker, token)
        try:
            task = ray.remote(_read_marker)
            refs = [task.options(num_cpus=0, max_retries=0, name="monai_liver shared-storage check",
                                 scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                    .remote(str(marker)) for n in self.nodes]
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
            for n, ref in zip(self.nodes, refs):
                where = f"{n.get('NodeManagerHostname') or n.get('NodeManagerAddress')}/{n['NodeID'][:8]}"
                if ref not in ready:
                    ray.cancel(ref, force=True)
                    raise LiverError(f"{out}: Ray node {where} did not answer the shared-storage check in {timeout:.0f} s")
                try:
                    node, seen = ray.get(ref)
                except ray.exceptions.RayError as e:
                    raise LiverError(f"{out}: the shared-storage check failed on Ray node {where} ({_one_line(e)})") from None
                if seen != token:
                    raise LiverError(f"{out}: Ray node {node} does not see the files written here: --out must be on a "
                                     "filesystem that every node mounts at the same path (e.g. NFS)")
        finally:
            marker.unlink(missing_ok=True)
        self.log(f"   shared storage: every node ({len(self.nodes)}) sees {out}")

    # ------------------------------------------------------------------------------------ runs

    def run(self, specs: Sequence, tracker, progress: Progress) -> None:
        """Submit every run as a task (the LiTS-initialised ones after the LiTS pretraining), report them
        as they finish; on the first failure, or Ctrl-C / SIGTERM, cancel the others and stop."""
        ray = self.ray
        resources = {"num_cpus": self.cpus, "num_gpus": self.gpu_share if self.use_gpu else 0}
        # a GPU task gets a fresh worker process (max_calls=1): a reused one keeps the CUDA device it started on
        task = ray.remote(num_gpus=self.gpu_share, max_calls=1)(_ray_run) if self.use_gpu else ray.remote(_ray_run)
        pending: dict = {}
        by_name: dict = {}
        # Ctrl-C / SIGTERM are noted here and acted on between waits: an exception raised by a handler inside
        # Ray's wait would come out as SystemExit(1), and the cancelling below must not be interrupted
        signals: list[int] = []
        main = threading.current_thread() is threading.main_thread()
        old = {sig: signal.signal(sig, lambda signum, _: signals.append(signum)) for sig in (signal.SIGINT, signal.SIGTERM)} \
            if main else {}
        try:
            for spec in specs:
                after = [by_name[a] for a in spec.after if a in by_name]
                ref = task.options(**resources, max_retries=self.max_retries, retry_exceptions=False,
                                   name=f"monai_liver {spec.name}").remote(spec, tracker, *after)
                by_name[spec.name] = ref
                pending[ref] = spec
            if specs:
                self.log(f"== {len(specs)} run(s) submitted to the Ray cluster")
            while pending:
                if signals:
                    raise SystemExit(128 + signals[0])
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    spec = pending.pop(ref)
                    progress.finished(self._result(ref, spec))
        except BaseException:
            self._cancel(list(pending))
            raise
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def _result(self, ref, spec) -> dict:
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, LiverError):
                raise LiverError(str(cause)) from None
            raise LiverError(f"{spec.run_dir}: the Ray task of {spec.name} failed: "
                             f"{_one_line(cause) if cause is not None else _one_line(e)}") from None
        except ray.exceptions.RayError as e:  # worker or node lost more often than max_retries, cancelled, ...
            raise LiverError(f"{spec.run_dir}: the Ray task of {spec.name} failed ({self.max_retries} retries): "
                             f"{_one_line(e)}") from None

    def _cancel(self, refs: list, grace: float = 20.0) -> None:
        """Cancel ``refs`` (KeyboardInterrupt in running tasks, then their workers killed) and wait for them:
        no task goes on writing into a run folder after the driver has stopped."""
        if not refs:
            return
        ray = self.ray
        self.log(f"   cancelling {len(refs)} Ray task(s)")
        with contextlib.suppress(Exception):
            for r in refs:
                ray.cancel(r, force=False)
            _, left = ray.wait(refs, num_returns=len(refs), timeout=grace)
            for r in left:
                ray.cancel(r, force=True)
            ray.wait(left, num_returns=len(left), timeout=grace) if left else None


def make_executor(name: str, *, address: str = "auto", cpus: float = 1.0, max_retries: int = 3,
                  device: str | None = None, log: Callable[[str], None] = print, runs_per_device: int = 1):
    """The executor called ``name`` (``"local"`` or ``"ray"``); LiverError for others or without Ray.
    ``runs_per_device``: runs at a time on each GPU (local: also on the CPU; Ray: ``num_gpus=1/K``)."""
    if name == "local":
        return LocalExecutor(runs_per_device, device)
    if name == "ray":
        return RayExecutor(address, cpus=cpus, max_retries=max_retries, device=device, log=log,
                           runs_per_device=runs_per_device)
    raise LiverError(f"executor '{name}' is not known; choose local or ray")
