"""``monai-liver export``: a trained bundle checkpoint -> TorchScript, via MONAI's ``ckpt_export``.

The bundle's ``configs/inference.json`` defines ``network_def`` as the ``TensorOutput`` wrapper
(segmentation logits ``(B, C, H, W)``; class logits ``(B, K)`` for ``cls_baseline``), which is what
TorchScript, ``verify_net_in_out`` and MONAI Label expect. The TorchScript file embeds the bundle's
``metadata.json`` and ``inference.json`` (MONAI's ``save_net_with_metadata``), and
``monai-liver infer --model model.ts`` runs it like the checkpoint.

The network is built with the settings the checkpoint records (:mod:`monai_liver.model_package`:
backbone, classes, image size), which are also embedded (``settings`` in the embedded
inference.json), so that ``infer`` runs the TorchScript file exactly like the checkpoint. A package
folder is accepted for ``model``. The checkpoint is read with ``torch.load(weights_only=True)`` and checked against the bundle's
network first (a checkpoint of another bundle fails with one line); MONAI's exporter then gets a
copy holding only those tensors, since it loads through ignite's ``Checkpoint.load_objects``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

from monai_liver.constants import DEFAULT_IMAGE_SIZE, check_image_size
from monai_liver.errors import LiverError

__all__ = ["export", "add_arguments", "main"]


def export(
    bundle: str | Path,
    model: str | Path,
    out: str | Path,
    class_names: Sequence[str] | None = None,
    image_size: int | None = None,
    use_trace: bool = False,
) -> Path:
    """Export ``model`` (``{"model": state_dict}``) of ``bundle`` to TorchScript at ``out``.

    ``use_trace``: ``torch.jit.trace`` with a ``(1, 1, image_size, image_size)`` input instead of
    ``torch.jit.script``. Returns the written path. Raises LiverError for a missing bundle or
    checkpoint, or a checkpoint that does not fit the bundle's network.
    """
    import torch
    from monai.bundle import ConfigParser, ckpt_export

    from monai_liver.engine.handlers import load_model
    from monai_liver.model_package import check_flags, is_torchscript, package_files, read_settings

    bundle, out = Path(bundle), Path(out)
    model = package_files(model)[0]
    final_out = out if out.suffix else out.with_suffix(".ts")
    if final_out.resolve() == model.resolve() or (final_out.exists() and not final_out.is_file()):
        raise LiverError(f"{final_out}: --out must be a new file or an earlier export, not the checkpoint or a folder")
    if final_out.is_file() and not is_torchscript(final_out):
        raise LiverError(f"{final_out}: exists and is not a TorchScript export; refusing to overwrite it")
    settings = read_settings(model)
    cfg, meta = bundle / "configs" / "inference.json", bundle / "configs" / "metadata.json"
    if not cfg.is_file():
        raise LiverError(f"{bundle}: not a bundle (no configs/inference.json)")
    overrides: dict = {"bundle_root": str(bundle)}
    for key in ("backbone", "class_names", "image_size"):
        if settings.get(key):
            overrides[key] = settings[key]
    overrides["settings"] = settings  # never the settings of whatever model sits in the bundle's models/
    parser = ConfigParser()
    parser.read_config(str(cfg))
    if settings.get("strategy") and parser.get("strategy") != settings["strategy"]:
        raise LiverError(f"{model}: a {settings['strategy']} model, not one of bundle {bundle} ({parser.get('strategy')})")
    class_names = check_flags(model, settings, image_size, class_names)
    if class_names:
        overrides["class_names"] = list(class_names)
    parser.update(overrides)
    if image_size is None:
        image_size = int(parser.get_parsed_content("image_size")) if "image_size" in parser else DEFAULT_IMAGE_SIZE
    image_size = check_image_size(image_size)
    try:
        net = parser.get_parsed_content("network_def")
    except Exception as e:
        raise LiverError(f"{cfg}: cannot build network_def ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    load_model(net, model)  # weights_only=True, strict, one clear line when it does not fit
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        clean = Path(tmp) / "model.pt"
        torch.save({"model": net.state_dict()}, clean)
        target = Path(tmp) / (out.name if out.suffix else out.name + ".ts")
        kwargs = {"input_shape": [1, 1, int(image_size), int(image_size)]} if use_trace else {}
        # MONAI embeds the config file as it is on disk: embed one with the model's values written in
        embedded = Path(tmp) / "inference.json"
        content = json.loads(cfg.read_text())
        content.update({k: v for k, v in overrides.items() if k != "bundle_root"})
        embedded.write_text(json.dumps(content, indent=4))
        try:
            ckpt_export(net_id="network_def", filepath=str(target), ckpt_file=str(clean),
                        meta_file=str(meta) if meta.is_file() else None, config_file=str(embedded), key_in_ckpt="model",
                        use_trace=use_trace, **kwargs, **overrides)
        except Exception as e:
            raise LiverError(f"{out}: TorchScript export failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        target.replace(final_out)  # atomic: a reader never sees half a file
    return final_out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, help="bundle folder (default: the repository's bundle of the model's strategy, else bundles/joint)")
    parser.add_argument("--model", type=Path, required=True, help="trained checkpoint (model.pt) or model package folder")
    parser.add_argument("--out", type=Path, required=True, help="TorchScript file to write (e.g. model.ts)")
    parser.add_argument("--classes", nargs="+", help="lesion class names the model was trained with (default: the bundle's)")
    parser.add_argument("--trace", action="store_true", help="torch.jit.trace instead of torch.jit.script")
    parser.add_argument("--image-size", type=int, help="input size for --trace (default: the bundle's image_size)")


def main(args: argparse.Namespace) -> int:
    from monai_liver.constants import bundles_dir

    from monai_liver.model_package import read_settings

    bundle = args.bundle or bundles_dir() / read_settings(args.model).get("strategy", "joint")  # the model's own bundle
    path = export(bundle, args.model, args.out, class_names=args.classes,
                  image_size=args.image_size, use_trace=args.trace)
    print(f"exported {path.resolve()}")
    return 0
