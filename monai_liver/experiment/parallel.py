"""Several runs at a time on one machine: ``monai-liver experiment --runs-per-device K`` (local executor).

**Slots.** Each visible GPU K times, or K slots on the CPU when there is no GPU (or ``--device cpu``):
:func:`device_slots`. With one slot in all (K = 1 on a machine with at most one GPU) the local executor
runs as it always has, one run after another in its own process; with more, this module runs them.

**Workers.** Each slot is one long-lived worker process (``python -m monai_liver.experiment.parallel``),
all started at once (no more than there are runs), with ``CUDA_VISIBLE_DEVICES`` set to its GPU (the
run sees it as ``cuda:0``) and ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` / torch threads = the CPU
budget // the slots (:func:`threads_per_run`; the budget is ``OMP_NUM_THREADS`` when set, else the
cores this process may use; the same for every run, however many are left, so a resumed experiment
computes alike). A worker executes its runs one after another through
:func:`~monai_liver.experiment.runs.execute_run`, the one code path of a run, so each run writes the
same folder, ``DONE`` marker, lock and ``runs.log`` lines as in the sequential executor; PyTorch and
MONAI are imported once per slot, not once per run. Its own output (warnings, a traceback) goes to
``<out>/workers/slot<j>.log``.

**Scheduling.** Once every worker has imported PyTorch and MONAI, the driver hands the next run in
plan order whose dependencies (``RunSpec.after``: the LiTS pretraining) have finished to an idle
slot on the least busy device (:func:`choose_slot`), prints the sequential executor's progress
lines, and on the first failure stops the other workers and raises that run's one-line error.
Ctrl-C / SIGTERM: the workers are sent SIGTERM (each ends its bundle as the sequential executor
does: the run folder stays resumable), waited for, then the driver exits with 128 + the signal's
number. A worker dies with the driver (``PR_SET_PDEATHSIG``), even when the driver is killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Collection, Mapping, Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path

from monai_liver.errors import LiverError

__all__ = ["choose_slot", "cpu_budget", "device_slots", "plan_slots", "run_parallel", "threads_per_run", "visible_gpus"]


# ------------------------------------------------------------------------------- pure functions


def visible_gpus(cuda_visible_devices: str | None, device_count: int) -> list[str]:
    """The GPUs this process may use, each as a ``CUDA_VISIBLE_DEVICES`` value for one child process.

    ``cuda_visible_devices``: this process's ``CUDA_VISIBLE_DEVICES`` (None: unset, so every GPU,
    ``"0"`` .. ``str(device_count - 1)``); its entries (indices, ``GPU-<uuid>``, ``MIG-<uuid>``) are
    kept as written, at most ``device_count`` of them. ``device_count``: what
    ``torch.cuda.device_count()`` says (0: no GPU, whatever the variable says)."""
    if device_count <= 0:
        return []
    if cuda_visible_devices is None:
        return [str(i) for i in range(device_count)]
    names = [x.strip() for x in cuda_visible_devices.split(",")]
    return [x for x in names if x][:device_count]


def device_slots(gpus: Sequence[str], runs_per_device: int) -> list[str | None]:
    """One entry per run that may execute at once: each GPU ``runs_per_device`` times, interleaved
    (``["0", "1", "0", "1"]`` for two GPUs and K = 2), or K times ``None`` (the CPU) without GPUs."""
    k = int(runs_per_device)
    if k < 1:
        raise LiverError(f"--runs-per-device must be at least 1 (got {runs_per_device})")
    if not gpus:
        return [None] * k
    return [g for _ in range(k) for g in gpus]


def choose_slot(slots: Sequence[str | None], busy: Collection[int]) -> int | None:
    """The slot for the next run: an idle one (index not in ``busy``) on the device with the fewest
    busy slots, the lowest index among equals; None when every slot is busy."""
    load: dict[str | None, int] = {}
    for j in busy:
        load[slots[j]] = load.get(slots[j], 0) + 1
    idle = [j for j in range(len(slots)) if j not in busy]
    return min(idle, key=lambda j: (load.get(slots[j], 0), j)) if idle else None


def threads_per_run(budget: int, n_slots: int) -> int:
    """CPU threads of each of ``n_slots`` runs that share ``budget`` threads (at least 1)."""
    return max(1, int(budget) // max(1, int(n_slots)))


def cpu_budget(environ: Mapping[str, str] | None = None) -> int:
    """The threads the runs of this experiment share: ``OMP_NUM_THREADS`` when it is a positive whole
    number, else the cores this process may run on."""
    env = os.environ if environ is None else environ
    with contextlib.suppress(ValueError):
        n = int(env.get("OMP_NUM_THREADS", ""))
        if n > 0:
            return n
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def plan_slots(device: str | None, runs_per_device: int) -> list[str | None]:
    """The slots of this machine: :func:`device_slots` over the GPUs this process sees (none with
    ``device == "cpu"``; else ``CUDA_VISIBLE_DEVICES`` and ``torch.cuda.device_count()``)."""
    gpus: list[str] = []
    if device != "cpu":
        import torch

        gpus = visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count())
    return device_slots(gpus, runs_per_device)


def describe_slots(slots: Sequence[str | None], threads: int) -> str:
    """One line: how many runs at a time, where, with how many threads each."""
    gpus = list(dict.fromkeys(g for g in slots if g is not None))
    where = f"{len(slots) // len(gpus)} per GPU on {len(gpus)} GPU(s) ({', '.join(gpus)})" if gpus else "on the CPU"
    return f"   local: {len(slots)} runs at a time, {where}, {threads} CPU thread(s) each; worker logs in <out>/workers/"


# ----------------------------------------------------------------------------------- the driver


class _Worker:
    """One slot's worker process and the two pipes to it (jobs in, results out)."""

    def __init__(self, index: int, gpu: str | None, threads: int, log: Path):
        from monai_liver.experiment.bundle_run import die_with_parent

        self.index, self.gpu, self.log = index, gpu, log
        self.node = socket.gethostname() + (f"/gpu{gpu}" if gpu is not None else "")
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # the monai_liver this driver runs, for the worker too
        env["PYTHONPATH"] = os.pathsep.join([root, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        jobs_r, jobs_w = os.pipe()
        results_r, results_w = os.pipe()
        log.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(log, "a") as f:
                f.write(f"\n== worker {index} ({'GPU ' + gpu if gpu is not None else 'CPU'}, {threads} thread(s)), "
                        f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
                f.flush()
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "monai_liver.experiment.parallel", str(jobs_r), str(results_w)],
                    stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=env,
                    pass_fds=(jobs_r, results_w), preexec_fn=die_with_parent)
        except BaseException:
            for fd in (jobs_w, results_r):
                os.close(fd)
            raise
        finally:
            for fd in (jobs_r, results_w):  # the worker's ends: closed here, so its death is an EOF
                os.close(fd)
        self.jobs = Connection(jobs_w, readable=False)
        self.results = Connection(results_r, writable=False)

    def send(self, spec, tracker) -> None:
        self.jobs.send((spec, tracker, self.node))

    def close(self) -> None:
        """No more runs: the worker exits (:meth:`wait` for it)."""
        with contextlib.suppress(OSError):
            self.jobs.send(None)

    def stop(self) -> None:
        """SIGTERM: the worker ends its run as the sequential executor does (:meth:`wait` for it)."""
        with contextlib.suppress(OSError):
            if self.proc.poll() is None:
                self.proc.terminate()

    def wait(self, timeout: float = 30.0) -> None:
        """Wait for the worker to exit (SIGKILL after ``timeout`` seconds); the pipes closed."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for c in (self.jobs, self.results):
            c.close()


def _ready(spec, finished: set[str], planned: set[str]) -> bool:
    """``spec`` may start: every run it reads from is finished, or not planned (done before)."""
    return all(a in finished or a not in planned for a in spec.after)


def run_parallel(specs: Sequence, tracker, progress, slots: Sequence[str | None], threads: int | None = None) -> None:
    """Execute ``specs`` on ``slots`` (see the module doc); returns when all have finished."""
    if not specs:
        return
    threads = threads or threads_per_run(cpu_budget(), len(slots))  # of all the slots: as many however many runs
    progress.log(describe_slots(slots, threads))
    slots = list(slots)[:len(specs)]  # no more workers than runs (the first slots: spread over the GPUs)
    logs = Path(specs[0].out) / "workers"
    waiting, planned, finished = list(specs), {s.name for s in specs}, set()
    running: dict[int, object] = {}  # slot -> its RunSpec
    workers: dict[int, _Worker] = {}
    started = 0
    # Ctrl-C / SIGTERM are noted here and acted on between waits: the stopping below must not be interrupted
    signals: list[int] = []
    main = threading.current_thread() is threading.main_thread()
    old = {sig: signal.signal(sig, lambda signum, _: signals.append(signum)) for sig in (signal.SIGINT, signal.SIGTERM)} \
        if main else {}

    def stop_if_asked() -> None:
        if signals:
            raise SystemExit(128 + signals[0])

    try:
        for j, gpu in enumerate(slots):
            workers[j] = _Worker(j, gpu, threads, logs / f"slot{j}.log")
        # every worker imports PyTorch and MONAI first; the first runs start together once all are ready
        starting = {w.results: j for j, w in workers.items()}
        while starting:
            stop_if_asked()
            for conn in wait(list(starting), timeout=1.0):
                stop_if_asked()
                _receive(workers[starting.pop(conn)], "starting", stop_if_asked)
        while waiting or running:
            stop_if_asked()
            while waiting:
                spec = next((s for s in waiting if _ready(s, finished, planned)), None)
                slot = choose_slot(slots, running) if spec is not None else None
                if slot is None:
                    break
                waiting.remove(spec)
                started += 1
                progress.log(f"== [{started}/{len(specs)}] {spec.name}")
                workers[slot].send(spec, tracker)
                running[slot] = spec
            if not running:  # nothing can start: a run waits for one that is neither planned nor finished
                raise LiverError(f"{waiting[0].run_dir}: {waiting[0].name} waits for {', '.join(waiting[0].after)}, "
                                 "which did not run")
            by_conn = {workers[j].results: j for j in running}
            for conn in wait(list(by_conn), timeout=1.0):
                stop_if_asked()
                j = by_conn[conn]
                spec = running.pop(j)
                progress.finished(_receive(workers[j], f"running {spec.name}", stop_if_asked, spec))
                finished.add(spec.name)
        for w in workers.values():  # all told at once, then waited for: they exit side by side
            w.close()
        for w in workers.values():
            w.wait()
    except BaseException:
        if running:
            progress.log(f"   stopping {len(running)} run(s)")
        for w in workers.values():
            w.stop()
        for w in workers.values():
            w.wait()
        raise
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _receive(worker: _Worker, doing: str, stop_if_asked, spec=None):
    """What ``worker`` sent: ``"ready"``'s pid, or the result of ``spec``; LiverError when the run failed
    or the worker died (``doing``: what it was doing, for the message)."""
    try:
        kind, value = worker.results.recv()
    except (EOFError, OSError):
        try:
            rc = worker.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            rc = None
        stop_if_asked()  # a worker ended by the same Ctrl-C as the driver
        where = f"{spec.run_dir}: " if spec is not None else ""
        raise LiverError(f"{where}worker process {worker.index} died {doing} (exit {rc}; see {worker.log})") from None
    if kind in ("ok", "ready"):
        return value
    if kind == "error":
        raise LiverError(value)
    raise LiverError(f"{spec.run_dir}: {spec.name} failed: {value} (traceback in {worker.log})")


# ----------------------------------------------------------------------------------- the worker


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def worker_main(jobs_fd: int, results_fd: int) -> int:
    """A slot's worker: runs each ``(spec, tracker, node)`` it receives through ``execute_run`` and
    sends back ``("ok", result)``, ``("error", LiverError text)`` or ``("crash", one line)``."""
    jobs, results = Connection(jobs_fd, writable=False), Connection(results_fd, readable=False)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads()))
    # what a bundle run imports, before the first run's clock starts (as the sequential executor has them by then)
    import monai.bundle.scripts  # noqa: F401
    import monai_liver.engine  # noqa: F401
    import monai_liver.networks.init  # noqa: F401
    import monai_liver.strategies  # noqa: F401
    import monai_liver.transforms  # noqa: F401
    from monai_liver.experiment.bundle_run import _on_signal
    from monai_liver.experiment.runs import execute_run

    # SIGTERM / SIGINT end the run as in the sequential executor (bundle_run's handler: its bundle subprocess
    # ended, SystemExit); noted too, so that the worker exits even when a bundle turned the SystemExit into an error
    stopped: list[int] = []

    def on_signal(signum, frame):
        if not stopped:
            _say(f"signal {signum}: stopping")
        stopped.append(signum)
        _on_signal(signum, frame)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    _say(f"ready: pid {os.getpid()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
         f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}")
    results.send(("ready", os.getpid()))
    while not stopped:
        try:
            job = jobs.recv()
        except EOFError:  # the driver has gone
            break
        if job is None:
            break
        spec, tracker, node = job
        _say(f"start {spec.name}")
        try:
            answer = ("ok", execute_run(spec, tracker, node))
        except LiverError as e:
            answer = ("error", str(e))
        except Exception as e:  # noqa: BLE001 - the traceback to the worker's log, one line to the driver
            traceback.print_exc()
            answer = ("crash", _first_line(e))
        _say(f"{answer[0]} {spec.name}")
        results.send(answer)
    _say("exit")
    return 128 + stopped[0] if stopped else 0


def _say(text: str) -> None:
    """A line in the worker's log."""
    print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.__stdout__, flush=True)  # not a run's log


if __name__ == "__main__":
    sys.exit(worker_main(int(sys.argv[1]), int(sys.argv[2])))
