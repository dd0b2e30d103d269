"""Running one MONAI bundle call for the experiment: ``monai.bundle run`` with config overrides, its
output appended to a log file, and a failure turned into one LiverError line naming that log.

Two isolations (``--isolation``): ``subprocess`` runs ``python -m monai.bundle run ...`` (a fresh
interpreter per call: GPU memory and global state are released; ~10-20 s of imports per call on a
small CPU machine); ``inprocess`` calls the same entry point, ``monai.bundle.scripts.run``, in this
process, so the imports are paid once (the CPU presets and the tests): the loggers the bundle's
``logging.conf`` binds to the log are put back afterwards.

:func:`stop_on_signals`: SIGTERM / SIGINT end the bundle subprocess now running before the
experiment exits, and a subprocess gets SIGTERM when the experiment dies (even by SIGKILL), so no
training goes on writing into a run folder that a resumed experiment also uses.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from monai_liver.errors import LiverError

__all__ = ["config_ids", "die_with_parent", "failure_line", "run_bundle", "stop_on_signals"]


def config_ids(config: Path) -> set[str]:
    """The top-level ids of a bundle config (the overrides it accepts)."""
    try:
        return set(json.loads(config.read_text()))
    except (OSError, ValueError) as e:
        raise LiverError(f"{config}: not a readable bundle config ({e})") from None


def run_bundle(bundle: Path, configs: Sequence[str], overrides: dict, log: Path, env: dict, isolation: str = "inprocess") -> None:
    """Run ``configs`` of ``bundle`` with ``overrides`` (and ``tracking``), output appended to ``log``;
    ``isolation``: ``"inprocess"`` or ``"subprocess"`` (see the module doc)."""
    files = [str(bundle / "configs" / c) for c in configs]
    logging_conf = bundle / "configs" / "logging.conf"
    log.parent.mkdir(parents=True, exist_ok=True)
    if isolation == "inprocess":
        _run_inprocess(files, logging_conf, overrides, log, env)
        return
    config_file = files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_file]
    if logging_conf.is_file():
        cmd += ["--logging_file", str(logging_conf)]
    for k, v in overrides.items():
        cmd += [f"--{k}", str(v)]  # "tracking" is a flag of monai.bundle run, the rest config ids
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        _Child.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent)
        try:
            rc = _Child.proc.wait()
        finally:
            _Child.proc = None
    if rc != 0:
        raise LiverError(f"{log}: bundle {bundle.name} failed (exit {rc}): {failure_line(log, _is_bundle_error)[:300]}")


def failure_line(log: Path, is_reason: Callable[[str], bool]) -> str:
    """The line of ``log`` that says why a command failed: its last non-empty line for which
    ``is_reason`` holds, else its last non-empty line ("" when the log cannot be read)."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    for ln in reversed(lines):
        if is_reason(ln):
            return ln
    return lines[-1] if lines else ""


def _is_bundle_error(line: str) -> bool:
    return line.startswith("error:") or "LiverError" in line


def _loggers() -> list[logging.Logger]:
    return [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]


def _run_inprocess(files: list[str], logging_conf: Path, overrides: dict, log: Path, env: dict) -> None:
    import gc
    import traceback

    from monai.bundle.scripts import run as bundle_run

    from monai_liver.engine import find_liver_error

    kwargs = dict(overrides)
    tracking = kwargs.pop("tracking", None)
    loggers = _loggers()
    before = {id(lg): (list(lg.handlers), lg.level, lg.propagate) for lg in loggers}
    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI",)}
    os.environ.update({k: env[k] for k in saved_env if k in env})
    error: BaseException | None = None
    consoles = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        # loggers made at import time (MONAI's own) write to the console: point them at the log too
        swapped = []
        for lg in loggers:
            for h in lg.handlers:
                if type(h) is logging.StreamHandler and getattr(h, "stream", None) in consoles:
                    swapped.append((h, h.setStream(f)))
        f.write(f"\n$ monai.bundle.scripts.run(config_file={files}, {', '.join(f'{k}={v!r}' for k, v in overrides.items())})\n")
        f.flush()
        try:
            bundle_run(config_file=files[0] if len(files) == 1 else files,
                       logging_file=str(logging_conf) if logging_conf.is_file() else None, tracking=tracking, **kwargs)
        except Exception as e:  # noqa: BLE001 - reported as one line, the traceback goes to the log
            traceback.print_exc(file=f)
            error = e
        finally:
            # the bundle's logging.conf bound handlers to this log file: put the loggers back
            for lg in _loggers():
                if id(lg) in before:
                    lg.handlers[:], lg.level, lg.propagate = before[id(lg)]
                else:
                    lg.handlers[:] = [h for h in lg.handlers if getattr(h, "stream", None) is not f]
            for h, stream in swapped:
                h.setStream(stream)
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            # the run's cycles (engine, network, optimiser) go now; what survives is frozen, so that the next
            # run's collection walks only that run's objects, not the whole interpreter again (torch, MONAI,
            # MLflow: 0.5 s a collection on 2 CPU cores)
            gc.collect()
            gc.freeze()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except Exception:
                pass
    if error is not None:
        liver = find_liver_error(error)
        msg = str(liver) if liver is not None else f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
        raise LiverError(f"{log}: bundle run failed: {msg}")


# ------------------------------------------------------------------------------------- signals


class _Child:
    """The bundle subprocess now running, terminated when the experiment is asked to stop."""

    proc: subprocess.Popen | None = None


def die_with_parent() -> None:  # pragma: no cover - runs in the child
    # Linux: the bundle process gets SIGTERM when the experiment dies, even by SIGKILL, so a killed
    # experiment never leaves a training writing into a run folder that a resumed one also uses.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _on_signal(signum, frame):  # pragma: no cover - exercised by the kill test through a subprocess
    p = _Child.proc
    if p is not None and p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """For the ``with`` block, SIGTERM and SIGINT end the bundle subprocess now running, then exit
    with status 128 + the signal's number; the previous handlers come back afterwards."""
    old = {}
    if hasattr(signal, "SIGTERM"):
        for sig in (signal.SIGTERM, signal.SIGINT):
            old[sig] = signal.signal(sig, _on_signal)
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
