"""Weight initialisation: ``initialise(net, init, ...)`` for scratch | imagenet | lits.

One mechanism for every strategy network: they all name their layers as FlexibleUNet does
(``encoder.*``, ``decoder.*``, ``segmentation_head.*``, plus ``cls_head.*``), so a source state dict
is mapped onto the target by name, with explicit rules where names or shapes differ:

- imagenet: MONAI's EfficientNet ImageNet weights (the files of ``monai.networks.nets.efficientnet.
  url_map``, in EfficientNet-PyTorch naming: ``_blocks.<i>.*``) -> ``encoder.*`` (MONAI nests the
  blocks per stage: ``_blocks.<stage>.<i>.*``). The RGB stem kernels (O, 3, k, k) are summed into
  one grey channel (O, 1, k, k), so a CT slice uses every pretrained filter. The ImageNet
  classifier (``_conv_head``, ``_bn1``, ``_fc``) has no counterpart and is skipped.
- lits: a ``lits_pretrain`` checkpoint (3-class U-Net) -> encoder, decoder and segmentation head.
  The joint network's channels start from the checkpoint's: background and liver from theirs,
  every lesion-type channel from the lesion channel. Classification heads start random.

Counts returned (``num_batches_tracked`` counters are copied when present but never counted):
``loaded`` network tensors set from the file, ``mapped`` those of them whose name or values were
translated (renamed, stem summed, head rows copied), ``skipped`` file tensors not used,
``reinitialised`` network tensors left at their random initialisation.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Optional, Union
from urllib.parse import urlparse

import torch
from torch import nn

from monai_liver.constants import INITS
from monai_liver.errors import LiverError

__all__ = ["LITS_ENCODER_LR_SCALE", "has_imagenet_weights", "imagenet_file_name", "imagenet_cache_path", "initialise",
           "initialised", "load_state_dict_file", "param_groups"]

PathLike = Union[str, Path]
_LOG = logging.getLogger(__name__)
#: MONAI's EfficientNet key -> EfficientNet-PyTorch key: drop the stage index of the blocks
#: (the same rule as monai.networks.nets.efficientnet._load_state_dict).
_BLOCK_PATTERN = re.compile(r"(.+)\.\d+(\.\d+\..+)")
_STEM = "_conv_stem.weight"
_SEG_HEAD = "segmentation_head.0."

#: the classification baseline's encoder learning rate, as a multiple of the run's, when the encoder
#: comes from lits_pretrain (its bundle's ``encoder_lr_scale``; see :func:`param_groups`)
LITS_ENCODER_LR_SCALE = 3.0


def _counted(key: str) -> bool:
    return not key.endswith("num_batches_tracked")


def _norm_without_statistics(key: str, target: dict, source: dict) -> bool:
    """Whether ``key`` is a tensor of a BatchNorm of ``target`` that is an affine instance norm in
    ``source`` (its weight there, no running statistics): the classification baseline's BatchNorm encoder (:mod:`monai_liver.networks.cls_baseline`)
    from the instance-normed lits_pretrain network. Such a norm keeps the network's own initialisation
    (weight 1, bias 0; its statistics estimated by the fine-tuning): the instance norm's scale and shift were fitted to
    per-slice statistics (bare loop, folds 0 / 1, seeds 0 / 1: held-out accuracy 0.59 fresh against
    0.54 with them loaded)."""
    prefix = key.rsplit(".", 1)[0] + "."
    return prefix + "running_mean" in target and prefix + "running_mean" not in source and prefix + "weight" in source


def _unwrap(net: nn.Module) -> nn.Module:
    """The strategy network inside DDP / DataParallel / TensorOutput wrappers."""
    while hasattr(net, "module") or (hasattr(net, "net") and not hasattr(net, "encoder")):
        net = getattr(net, "module", None) or net.net
    return net


def load_state_dict_file(path: PathLike, what: str = "weights file") -> dict[str, torch.Tensor]:
    """Read a PyTorch weights file safely: ``torch.load(weights_only=True)`` on CPU.

    Accepts ``{"model": state_dict, ...}`` (our checkpoints, MONAI's CheckpointSaver),
    ``{"state_dict": state_dict}`` or a plain state dict; strips a DDP ``module.`` prefix.
    Raises LiverError naming the file when it is missing, unreadable, holds Python objects other
    than tensors (refused, never executed), or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise LiverError(f"{path}: {what} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LiverError(
            f"{path}: refused to load {what}: it holds Python objects other than tensors, which "
            f"torch.load(weights_only=True) does not run ({first})"
        ) from e
    except Exception as e:  # truncated zip, not a torch file, ...
        raise LiverError(f"{path}: cannot be read as a PyTorch {what} ({type(e).__name__}: {e})") from e
    for key in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise LiverError(f"{path}: {what} holds a {type(obj).__name__}, not a state dict of tensors")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise LiverError(f"{path}: {what} holds no tensors")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


# ---------------------------------------------------------------------------------------- imagenet


def _imagenet_url(net: nn.Module) -> tuple[str, str]:
    """(backbone, url) of the ImageNet weights for ``net``'s encoder; LiverError if none exist."""
    from monai.networks.nets.efficientnet import EfficientNetBNFeatures, url_map

    backbone = str(getattr(net, "backbone", "?"))
    encoder = getattr(net, "encoder", None)
    if not isinstance(encoder, EfficientNetBNFeatures) or backbone not in url_map:
        have = ", ".join(k for k in url_map if k.startswith("efficientnet-"))
        raise LiverError(f"backbone '{backbone}': no ImageNet weights exist for it (available for {have})")
    if not isinstance(encoder._conv_stem, nn.Conv2d):
        raise LiverError(f"backbone '{backbone}': ImageNet weights are 2D; build the network with spatial_dims=2")
    return backbone, url_map[backbone]


def has_imagenet_weights(backbone: str) -> bool:
    """Whether MONAI has ImageNet weights for ``backbone`` (the EfficientNets; not basicunet or ResNet)."""
    from monai.networks.nets.efficientnet import url_map

    return backbone in url_map


def imagenet_file_name(backbone: str = "efficientnet-b0") -> str:
    """File name of MONAI's ImageNet weights for ``backbone``, e.g. ``efficientnet-b0-355c32eb.pth``."""
    from monai.networks.nets.efficientnet import url_map

    if backbone not in url_map:
        raise LiverError(f"backbone '{backbone}': no ImageNet weights exist for it")
    return Path(urlparse(url_map[backbone]).path).name


def imagenet_cache_path(backbone: str = "efficientnet-b0") -> Path:
    """Where torch hub (and MONAI's ``pretrained=True``) keeps the file: ``<hub dir>/checkpoints/<name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / imagenet_file_name(backbone)


def _imagenet_state_dict(
    backbone: str, url: str, imagenet_weights: Optional[PathLike], download: bool
) -> tuple[dict[str, torch.Tensor], str]:
    """ImageNet state dict and where it came from: explicit file, hub cache, or download."""
    what = f"ImageNet weights file for {backbone}"
    if imagenet_weights:
        return load_state_dict_file(imagenet_weights, what), str(imagenet_weights)
    cached = imagenet_cache_path(backbone)
    if cached.is_file():
        return load_state_dict_file(cached, what), str(cached)
    reason = "download disabled"
    if download:
        try:
            obj = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, weights_only=True)
        except Exception as e:  # no network, proxy, HTTP error, ...
            reason = f"download failed: {type(e).__name__}"
        else:
            if cached.is_file():  # the hub saved it there; read it through the same checks
                return load_state_dict_file(cached, what), url
            return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, url
    raise LiverError(
        f"{cached}: ImageNet weights for {backbone} not found ({reason}); download {url} "
        f"and put {cached.name} in {cached.parent}, or pass the file with --imagenet_weights"
    )


def _init_imagenet(
    net: nn.Module, imagenet_weights: Optional[PathLike], download: bool
) -> tuple[dict[str, torch.Tensor], dict[str, int], str, list[str]]:
    backbone, url = _imagenet_url(net)
    source, origin = _imagenet_state_dict(backbone, url, imagenet_weights, download)
    target = net.state_dict()
    new: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    mapped = 0
    enc_keys = [k for k in target if k.startswith("encoder.")]
    for key in enc_keys:
        name = key[len("encoder.") :]
        # a file in MONAI's own naming is accepted too
        src_key = name if name in source else _BLOCK_PATTERN.sub(r"\1\2", name)
        value = source.get(src_key)
        if value is None:
            continue
        want = target[key].shape
        if name == _STEM and value.ndim == len(want) and value.shape[1] != want[1] and value.shape[0] == want[0]:
            # RGB -> c channels: each new channel gets sum(RGB) / c, so c = 1 is the plain sum
            value = value.sum(dim=1, keepdim=True).div(want[1]).expand(-1, want[1], *value.shape[2:])
        if value.shape != want:
            continue
        new[key] = value
        used.add(src_key)
        mapped += int(src_key != name or name == _STEM and value.shape != source[src_key].shape)
    n_enc = sum(_counted(k) for k in enc_keys)
    n_hit = sum(_counted(k) for k in new)
    if n_hit < n_enc:
        raise LiverError(
            f"{origin}: does not look like ImageNet weights for {backbone}: {n_hit} of {n_enc} encoder tensors match"
        )
    skipped = [k for k in source if k not in used and _counted(k)]
    counts = {"loaded": n_hit, "mapped": mapped, "skipped": len(skipped)}
    return new, counts, origin, skipped


# -------------------------------------------------------------------------------------------- lits


def _init_lits(
    net: nn.Module, lits_checkpoint: Optional[PathLike]
) -> tuple[dict[str, torch.Tensor], dict[str, int], str, list[str]]:
    if not lits_checkpoint:
        raise LiverError("init 'lits' needs the lits_pretrain checkpoint (model.pt): pass --lits_checkpoint")
    source = load_state_dict_file(lits_checkpoint, "lits_pretrain checkpoint")
    target = net.state_dict()
    new: dict[str, torch.Tensor] = {}
    mapped = 0
    enc_keys = [k for k in target if k.startswith("encoder.")]
    fresh = {k for k in target if _norm_without_statistics(k, target, source)}
    n_enc = sum(_counted(k) for k in enc_keys if k not in fresh)
    n_hit = sum(_counted(k) for k in enc_keys if k not in fresh and k in source and source[k].shape == target[k].shape)
    if n_hit < n_enc:
        backbone = getattr(net, "backbone", "?")
        raise LiverError(
            f"{lits_checkpoint}: does not look like a lits_pretrain checkpoint for backbone {backbone}: "
            f"{n_hit} of {n_enc} encoder tensors match"
        )
    for key, want in target.items():
        if not key.startswith(("encoder.", "decoder.", "segmentation_head.")) or key not in source or key in fresh:
            continue  # classification heads (new) and BatchNorms of instance norms start fresh
        value = source[key]
        if value.shape == want.shape:
            new[key] = value
        elif key.startswith(_SEG_HEAD) and value.shape[0] == 3 < want.shape[0] and value.shape[1:] == want.shape[1:]:
            # joint: background, liver as they are; every lesion-type channel from the lesion channel
            new[key] = torch.cat([value[:2], value[2:3].expand(want.shape[0] - 2, *value.shape[1:])])
            mapped += 1
        # any other shape difference: the tensor keeps its random initialisation (counted below)
    skipped = [k for k in source if k not in new and _counted(k)]
    counts = {"loaded": sum(_counted(k) for k in new), "mapped": mapped, "skipped": len(skipped)}
    return new, counts, str(lits_checkpoint), skipped


# ------------------------------------------------------------------------------------------ public


def initialise(
    net: nn.Module,
    init: str,
    imagenet_weights: Optional[PathLike] = None,
    lits_checkpoint: Optional[PathLike] = None,
    logger: Optional[logging.Logger] = None,
    *,
    download: bool = True,
) -> dict[str, int]:
    """Initialise ``net`` (from :func:`~monai_liver.networks.factory.build_network`) in place.

    Args:
        net: a strategy network (DDP / TensorOutput wrappers are looked through).
        init: ``"scratch"`` (keep the random weights), ``"imagenet"`` (encoder from MONAI's
            EfficientNet ImageNet weights) or ``"lits"`` (encoder, decoder and segmentation head from
            a ``lits_pretrain`` checkpoint).
        imagenet_weights: the ImageNet file to use; if empty, the torch hub cache
            (:func:`imagenet_cache_path`) is tried, then a download.
        lits_checkpoint: the ``lits_pretrain`` bundle's ``model.pt`` (``{"model": state_dict}`` or a
            plain state dict).
        logger: where the one summary line goes (default: this module's logger).
        download: allow the ImageNet download when no file is found.

    Returns:
        ``{"loaded", "mapped", "skipped", "reinitialised"}`` tensor counts (see the module doc).

    Raises:
        LiverError: unknown init, missing / unreadable / unsafe file, weights of another
            architecture, or no ImageNet weights available offline.
    """
    log = logger or _LOG
    if init not in INITS:
        raise LiverError(f"init '{init}' is not known; choose one of {', '.join(INITS)}")
    net = _unwrap(net)
    target = net.state_dict()
    n_total = sum(_counted(k) for k in target)
    if init == "scratch":
        log.info(f"init scratch: all {n_total} tensors random")
        return {"loaded": 0, "mapped": 0, "skipped": 0, "reinitialised": n_total}
    if init == "imagenet":
        new, counts, origin, skipped = _init_imagenet(net, imagenet_weights, download)
    else:
        new, counts, origin, skipped = _init_lits(net, lits_checkpoint)
    state = dict(target)
    for key, value in new.items():
        state[key] = value.to(dtype=target[key].dtype).clone()
    net.load_state_dict(state, strict=True)
    random_keys = [k for k in target if k not in new and _counted(k)]
    counts["reinitialised"] = len(random_keys)
    groups = sorted({k.split(".")[0] for k in random_keys})
    log.info(
        f"init {init} from {origin}: loaded {counts['loaded']} tensors ({counts['mapped']} mapped), "
        f"skipped {counts['skipped']} from the file{_examples(skipped)}, "
        f"{counts['reinitialised']} random{_examples(groups)}"
    )
    return counts


def initialised(
    net: nn.Module,
    init: str,
    imagenet_weights: Optional[PathLike] = None,
    lits_checkpoint: Optional[PathLike] = None,
    logger: Optional[logging.Logger] = None,
) -> nn.Module:
    """:func:`initialise` that returns the network, for bundle configs:
    ``"$monai_liver.networks.init.initialised(@network_def, @init, ...).to(@device)"``."""
    initialise(net, init, imagenet_weights, lits_checkpoint, logger)
    return net


def param_groups(net: nn.Module, learning_rate: float, encoder_lr_scale: float = 1.0) -> list[dict]:
    """The optimiser's parameter groups of ``net``: group 0 every parameter outside the encoder at
    ``learning_rate`` (the rate the training log shows), group 1 the ``encoder.*`` parameters at
    ``learning_rate * encoder_lr_scale`` (DDP / TensorOutput wrappers are looked through).

    Why a scale above 1 for the classification baseline from LiTS: it takes only the pretraining's encoder
    convolutions, each followed by a BatchNorm that starts fresh, so a convolution's scale does not change
    the function, but AdamW's steps have the same size whatever the weights' norm, and the pretraining
    leaves those convolutions with 1.5-8x the norm of a fresh initialisation (deepest most): at one
    learning rate the transferred encoder moves several times slower, relative to its weights, than a
    fresh one. Measured on the quick demo's data (folds 0 / 1 x training seeds 0-4, ten runs each, `/tmp`
    script over the bundle, 20 epochs at lr 5e-3), mean held-out accuracy: 0.45 with the whole network at
    lr 2e-3, 0.50 / 0.55 / 0.51 with the encoder at 1x / 3x / 5x, 0.55 from scratch (README).
    """
    net = _unwrap(net)
    if encoder_lr_scale <= 0:
        raise LiverError(f"encoder_lr_scale {encoder_lr_scale}: must be above 0")
    encoder = list(net.encoder.parameters()) if hasattr(net, "encoder") else []
    ids = {id(p) for p in encoder}
    groups: list[dict] = [{"params": [p for p in net.parameters() if id(p) not in ids]}]
    if encoder:
        groups.append({"params": encoder, "lr": float(learning_rate) * float(encoder_lr_scale)})
    return groups


def _examples(names: list[str], n: int = 4) -> str:
    if not names:
        return ""
    more = f", ... {len(names) - n} more" if len(names) > n else ""
    return f" ({', '.join(names[:n])}{more})"
