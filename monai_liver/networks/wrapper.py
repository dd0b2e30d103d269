"""``TensorOutput``: a strategy network's dict output as one plain tensor.

For TorchScript export, ``monai.bundle verify_net_in_out`` and MONAI Label, which all expect a
network that returns a tensor whose channels match the first output of the bundle's
``network_data_format``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

__all__ = ["TensorOutput", "plain_swish"]

_PREFIX = "net."


def plain_swish(net: nn.Module) -> nn.Module:
    """Switch EfficientNet encoders to the plain swish activation (in place).

    MONAI's default memory-efficient swish is a custom autograd Function, which TorchScript can
    neither script nor save from a trace; the plain one computes the same values.
    """
    for module in net.modules():
        if hasattr(module, "set_swish") and hasattr(module, "_blocks"):
            module.set_swish(memory_efficient=False)
    return net


class TensorOutput(nn.Module):
    """Wrap a strategy network: ``forward(x) -> net(x)[key]``.

    Args:
        net: a network from :func:`~monai_liver.networks.factory.build_network`.
        key: ``"seg"`` or ``"cls"``; default the network's ``primary_output`` (``"cls"`` for the
            classification baseline, ``"seg"`` otherwise): ``(B, C_seg, H, W)`` or ``(B, K)`` logits.

    The wrapper's state dict has the same keys as ``net``'s (no ``net.`` prefix), so a training
    checkpoint ``{"model": net.state_dict()}`` loads into the wrapper unchanged (bundle export,
    MONAI Label). The wrapped network is switched to the plain swish (:func:`plain_swish`) so that
    the wrapper can be scripted or traced. Prefer ``torch.jit.script``: the U-Net decoder pads
    skip connections by input size, which a trace freezes at the traced size.
    """

    def __init__(self, net: nn.Module, key: Optional[str] = None) -> None:
        super().__init__()
        key = key or getattr(net, "primary_output", "seg")
        if key not in ("seg", "cls"):
            raise ValueError(f"key must be 'seg' or 'cls', got {key!r}")
        self.net = plain_swish(net)
        self.key: str = key
        self.register_state_dict_post_hook(_drop_prefix)
        self.register_load_state_dict_pre_hook(_add_prefix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)[self.key]
        assert y is not None, "the wrapped network has no such output"
        return y


def _drop_prefix(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """state_dict hook: ``<prefix>net.<name>`` -> ``<prefix><name>``."""
    for name in [k for k in state_dict if k.startswith(prefix + _PREFIX)]:
        state_dict[prefix + name[len(prefix) + len(_PREFIX) :]] = state_dict.pop(name)


def _add_prefix(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: ``<prefix><name>`` -> ``<prefix>net.<name>`` (either form is accepted)."""
    for name in [k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + _PREFIX)]:
        state_dict[prefix + _PREFIX + name[len(prefix) :]] = state_dict.pop(name)
