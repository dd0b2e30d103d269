"""The ImageNet weights of the ``imagenet`` init, looked up once per experiment (``--imagenet-weights``,
the torch hub cache, a download). When there are none, the ImageNet rows are reported as not run,
with the reason (``runs/<strategy>/imagenet/NOT_RUN``), and the rest proceeds."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from monai_liver.atomic import write_text
from monai_liver.errors import LiverError
from monai_liver.experiment.settings import ExperimentSettings

__all__ = ["imagenet_for_runs", "imagenet_status"]


def imagenet_status(imagenet_weights: str | None, download: bool = True) -> tuple[str | None, str]:
    """(weights file to pass to the bundles or "" for the hub cache, None when unavailable; message).

    Uses :func:`monai_liver.networks.init.initialise` on a throwaway network: the same lookup (file,
    torch hub cache, download) and the same checks as the bundles."""
    from monai_liver.networks.factory import build_network
    from monai_liver.networks.init import imagenet_cache_path, initialise

    try:
        initialise(build_network("cls_baseline"), "imagenet", imagenet_weights=imagenet_weights or None, download=download)
    except LiverError as e:
        return None, str(e)
    src = str(imagenet_weights) if imagenet_weights else str(imagenet_cache_path())
    return (str(imagenet_weights) if imagenet_weights else ""), f"ImageNet weights: {src}"


def imagenet_for_runs(out: Path, s: ExperimentSettings, remote: bool, log: Callable[[str], None],
                      stage: Callable[[str], AbstractContextManager]) -> tuple[str, dict[str, str]]:
    """(the ``imagenet_weights`` override of the ImageNet runs, ``{"imagenet": reason}`` when they are
    not run). ``remote``: the runs execute on other machines, which get a copy of this machine's
    torch hub file in ``out``. ``stage(name)``: times the lookup."""
    not_run: dict[str, str] = {}
    imagenet_file = ""
    from monai_liver.networks.init import has_imagenet_weights

    if "imagenet" in s.inits and not has_imagenet_weights(s.backbone):
        not_run["imagenet"] = f"no ImageNet weights exist for backbone {s.backbone} (use --backbone efficientnet-b0)"
        log(f"   not run: ImageNet rows ({not_run['imagenet']})")
    elif "imagenet" in s.inits:
        with stage("imagenet weights"):
            found, msg = imagenet_status(str(s.imagenet_weights) if s.imagenet_weights else None, download=s.download)
            if found is None:
                not_run["imagenet"] = "ImageNet weights unavailable: " + msg
                log(f"   not run: ImageNet rows ({msg})")
            else:
                imagenet_file = found
                log(f"   {msg}")
                if not found and remote:  # the torch hub cache of this machine: share it with the nodes
                    from monai_liver.atomic import copy_file
                    from monai_liver.networks.init import imagenet_cache_path

                    src = imagenet_cache_path(str(s.backbone))
                    imagenet_file = str(out / "imagenet" / src.name)
                    if not Path(imagenet_file).is_file():
                        copy_file(src, imagenet_file)
                    log(f"   ImageNet weights for the Ray nodes: {imagenet_file}")
    for strategy in s.strategies:
        marker = out / "runs" / strategy / "imagenet" / "NOT_RUN"
        if "imagenet" in not_run:
            write_text(marker, not_run["imagenet"] + "\n")
        elif marker.is_file():
            marker.unlink()
    return imagenet_file, not_run
