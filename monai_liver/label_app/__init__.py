"""MONAI Label integration: an app that serves and fine-tunes the joint bundle.

``monai-liver label-server --studies DIR --model model.pt`` (:mod:`.server`) starts it;
:mod:`.main` holds the app, :mod:`.infer` / :mod:`.train` its tasks, :mod:`.volume` the
slice-by-slice 3D inference. Needs the ``label`` extra (``pip install -e '.[label]'``); this
``__init__`` imports nothing from MONAI Label, so the CLI stays fast without it.
"""
