"""The experiment's MLflow parent run (SQLite ``<out>/mlflow.db`` unless ``--tracking-uri``).

One parent run per experiment, its id kept in ``<out>/mlflow_parent.json`` so that a resumed
experiment keeps it; one child run per (strategy, init, fold). The bundle's ``MLFlowHandler`` creates
the child run (``--tracking mlflow``); MONAI's handler cannot be given a parent, so the finished
child is attached to the parent with MLflow's ``mlflow.parentRunId`` tag and the held-out figures
(``metrics.json``) are logged into it. The parent gets the results table, report and figures as
artifacts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from monai_liver.atomic import write_text
from monai_liver.experiment.settings import ExperimentSettings

__all__ = ["EXPERIMENT_NAME", "ParentRun", "tracking_uri"]

#: the MLflow experiment that holds the parent and child runs
EXPERIMENT_NAME = "monai_liver"


def tracking_uri(out: Path, s: ExperimentSettings) -> str | None:
    """The tracking URI the runs log to (``--tracking-uri``, else SQLite in ``out``); None without tracking."""
    if not s.tracking:
        return None
    return s.tracking_uri or ("sqlite:///" + (out / "mlflow.db").as_posix())


class ParentRun:
    """The parent MLflow run of an experiment (created once, kept across resumes)."""

    def __init__(self, out: Path, uri: str, experiment: str, params: dict, log: Callable[[str], None]):
        import mlflow
        from mlflow.tracking import MlflowClient

        from monai_liver.engine.tracking import artifact_location, check_tracking_uri

        self.uri, self.log = check_tracking_uri(uri), log
        self.client = MlflowClient(tracking_uri=self.uri)
        self.mlflow = mlflow
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (exp.experiment_id if exp else
                              self.client.create_experiment(experiment, artifact_location=artifact_location(self.uri)))
        self.experiment = experiment
        state = out / "mlflow_parent.json"
        run_id = None
        if state.is_file():
            try:
                saved = json.loads(state.read_text())
                if saved.get("tracking_uri") == self.uri:
                    run_id = saved.get("run_id")
                    self.client.get_run(run_id)
            except Exception:
                run_id = None
        if run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=f"experiment-{out.name}",
                                         tags={"monai_liver.out": str(out)})
            run_id = run.info.run_id
            for k, v in params.items():
                self.client.log_param(run_id, k, str(v)[:500])
            write_text(state, json.dumps({"tracking_uri": self.uri, "run_id": run_id, "experiment": experiment}))
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.parent_id = run_id

    def __getstate__(self) -> dict:
        # a Ray task attaches its run to the parent itself: it gets the ids, and makes its own client
        return {"uri": self.uri, "experiment_id": self.experiment_id, "experiment": self.experiment,
                "parent_id": self.parent_id}

    def __setstate__(self, state: dict) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        self.__dict__.update(state)
        self.client, self.mlflow, self.log = MlflowClient(tracking_uri=self.uri), mlflow, _print

    def attach_child(self, run_name: str, metrics_json: Path | None, extra: dict) -> None:
        """Tag the newest run called ``run_name`` as a child of the parent and log its held-out figures."""
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`mlflow.runName` = '{run_name}'",
                                       order_by=["attributes.start_time DESC"], max_results=5)
        if runs:
            run_id = runs[0].info.run_id
        else:  # the bundle logged nothing (e.g. its tracking is off): record the run from here
            run_id = self.client.create_run(self.experiment_id, run_name=run_name).info.run_id
            self.client.set_terminated(run_id)
        self.client.set_tag(run_id, "mlflow.parentRunId", self.parent_id)
        for k, v in extra.items():
            self.client.set_tag(run_id, k, str(v))
        if metrics_json is not None and metrics_json.is_file():
            m = json.loads(metrics_json.read_text())
            for k, v in m.items():
                if isinstance(v, (int, float)) and v == v:  # finite numbers only (NaN != NaN)
                    self.client.log_metric(run_id, f"heldout_{k}", float(v))
                elif isinstance(v, dict):
                    for c, x in v.items():
                        if isinstance(x, (int, float)) and x == x:
                            self.client.log_metric(run_id, f"heldout_{k}_{c}", float(x))

    def finish(self, out: Path, status: str = "FINISHED") -> None:
        for name in ("results.csv", "results.md", "per_slice.csv", "report.html", "experiment.json"):
            if (out / name).is_file():
                self.client.log_artifact(self.parent_id, str(out / name))
        if (out / "figures").is_dir():
            self.client.log_artifacts(self.parent_id, str(out / "figures"), artifact_path="figures")
        self.client.set_terminated(self.parent_id, status=status)


def _print(msg: str) -> None:
    print(msg, flush=True)
