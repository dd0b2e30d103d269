"""The experiment stage: every strategy x init x fold through the bundles, the results table, the report.

- :mod:`~monai_liver.experiment.runner`: ``monai-liver experiment`` (pretrain, run, resume, MLflow).
- :mod:`~monai_liver.experiment.aggregate`: per-slice predictions -> ``results.csv`` / ``results.md``.
- :mod:`~monai_liver.experiment.report`: ``monai-liver report`` (``report.html`` + PNGs, offline).
- :mod:`~monai_liver.experiment.paper`: the paper's numbers.
"""
