"""Every bundle's metadata.json against the MONAI Bundle specification.

The mandatory keys and the network data format are checked here offline. MONAI's
``verify_metadata`` validates against a JSON schema that it downloads from the URL in the
``schema`` key: that check runs where a network exists and is skipped, saying why, where not.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from monai_liver.constants import DEFAULT_CLASSES
from monai_liver.networks.factory import seg_channels

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ("lits_pretrain", "cls_baseline", "seg_baseline", "ynet", "joint")
#: keys the MONAI Bundle specification makes mandatory in metadata.json
MANDATORY = (
    "version", "changelog", "monai_version", "pytorch_version", "numpy_version",
    "required_packages_version", "task", "description", "authors", "copyright", "network_data_format",
)  # fmt: skip


def _meta(bundle: str) -> dict:
    return json.loads((ROOT / "bundles" / bundle / "configs" / "metadata.json").read_text())


@pytest.mark.parametrize("bundle", BUNDLES)
def test_mandatory_keys_and_channel_def(bundle):
    meta = _meta(bundle)
    missing = [k for k in MANDATORY if k not in meta]
    assert not missing, f"{bundle}: metadata.json lacks {missing}"
    assert meta["version"] in meta["changelog"], "the current version has a changelog entry"
    fmt = meta["network_data_format"]
    image = fmt["inputs"]["image"]
    assert image["num_channels"] == 1 and image["modality"] == "CT"
    first_name, first = next(iter(fmt["outputs"].items()))  # MONAI tooling reads the first output
    assert len(first["channel_def"]) == first["num_channels"], first_name
    n_classes = len(DEFAULT_CLASSES)  # the bundles ship with the default lesion types
    if bundle == "cls_baseline":
        assert first["num_channels"] == n_classes
    else:
        assert first["num_channels"] == seg_channels(bundle, n_classes)
        assert first["channel_def"]["0"] == "background" and first["channel_def"]["1"] == "liver"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_verify_metadata_against_monai_schema(bundle, tmp_path):
    from monai.bundle import verify_metadata

    url = _meta(bundle)["schema"]
    try:
        urllib.request.urlopen(url, timeout=5).close()
    except OSError as e:
        pytest.skip(f"verify_metadata downloads its JSON schema from {url}, which is not reachable here ({e})")
    verify_metadata(
        meta_file=str(ROOT / "bundles" / bundle / "configs" / "metadata.json"), filepath=str(tmp_path / "schema.json")
    )
