"""The experiment stage: every strategy x init x fold through the bundles, the results table, the report.

- :mod:`~monai_liver.experiment.cli`: ``monai-liver experiment``'s flags; :mod:`~monai_liver.experiment.settings`:
  its settings (one frozen record, the presets ``quick`` / ``full`` as instances).
- :mod:`~monai_liver.experiment.runner`: the stages (data, MLflow parent, runs, packages, report, resume).
- :mod:`~monai_liver.experiment.data`: the datalists with the asked folds, the data fingerprint.
- :mod:`~monai_liver.experiment.runs`: what each run is (``RunSpec``) and the one code path of a run;
  :mod:`~monai_liver.experiment.bundle_run`: one bundle call (in this process or a subprocess, its log, signals);
  :mod:`~monai_liver.experiment.executors`: where the runs execute (local, Ray).
- :mod:`~monai_liver.experiment.mlflow_parent`: the MLflow parent run; :mod:`~monai_liver.experiment.imagenet`:
  the ImageNet weights of the ``imagenet`` init.
- :mod:`~monai_liver.experiment.packages`: a model package per row, the end-to-end check.
- :mod:`~monai_liver.experiment.aggregate`: per-slice predictions -> ``results.csv`` / ``results.md``.
- :mod:`~monai_liver.experiment.report`: ``monai-liver report`` (``report.html`` + PNGs, offline).
- :mod:`~monai_liver.experiment.paper`: the paper's numbers.
"""
