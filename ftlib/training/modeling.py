"""Load a checkpoint with a head sized to the labels, refusing a silent mismatch.

Each loader takes ``checkpoint``, where ``from_pretrained`` loads from: what
:func:`ftlib.training.checkpoints.prepare_checkpoint` returned, the run's one resolving step. Without it the loader
resolves ``--model_name_or_path`` itself (offline short names too), for library use in a single process.
"""

from __future__ import annotations

import logging
import re

from transformers import AutoConfig

logger = logging.getLogger(__name__)

_DEFAULT_NAME = re.compile(r"LABEL_\d+")


def checkpoint_kwargs(model_args) -> dict:
    """What every ``from_pretrained`` of the checkpoint shares: revision, cache, remote code (off unless asked)."""
    return {
        "revision": model_args.revision,
        "cache_dir": model_args.cache_dir,
        "trust_remote_code": model_args.trust_remote_code,
    }


def checkpoint_path(model_args, checkpoint: str | None = None) -> str:
    """``checkpoint`` if given (the run resolved it), else ``--model_name_or_path`` with short names resolved now."""
    if checkpoint is not None:
        return checkpoint
    from ftlib.training.checkpoints import resolve_checkpoint

    return resolve_checkpoint(model_args.model_name_or_path, getattr(model_args, "gguf_file", None))


def load_config_for_labels(model_args, num_labels: int, id2label: dict[int, str], problem_type: str | None, *,
                           checkpoint: str | None = None, head_suffix: str = "Classification", **extra):
    """The checkpoint's config with our labels. A checkpoint that already has a task head (an architecture ending
    with ``head_suffix``) of another size is an error (its head would be dropped) unless ``--ignore_mismatched_sizes``."""
    config = AutoConfig.from_pretrained(checkpoint_path(model_args, checkpoint), **checkpoint_kwargs(model_args))
    has_head = any(a.endswith(head_suffix) for a in (config.architectures or []))
    if has_head and config.num_labels != num_labels and not model_args.ignore_mismatched_sizes:
        raise ValueError(
            f"{model_args.model_name_or_path} has a head for {config.num_labels} labels "
            f"({', '.join(map(str, config.id2label.values()))}) but the data has {num_labels} "
            f"({', '.join(id2label.values())}); pass --ignore_mismatched_sizes to train a new head"
        )
    if has_head and config.num_labels == num_labels:
        theirs = list(config.id2label.values())
        ours = list(id2label.values())
        if theirs != ours and not all(_DEFAULT_NAME.fullmatch(str(n)) for n in theirs):
            logger.warning("the checkpoint's head labels %s are renamed to the data's %s", theirs, ours)
    for key, value in model_args.config_updates.items():
        if not hasattr(config, key):  # a typo would otherwise become a new, unused attribute
            raise ValueError(f"--config_overrides: {type(config).__name__} has no attribute '{key}'")
        setattr(config, key, value)
    if id2label:
        config.id2label = dict(id2label)
        config.label2id = {v: k for k, v in id2label.items()}
    config.num_labels = num_labels  # after id2label, which resets it (regression: one output, no names)
    config.problem_type = problem_type
    for key, value in extra.items():
        setattr(config, key, value)
    return config


def load_model(auto_class, model_args, config, checkpoint: str | None = None):
    """``auto_class.from_pretrained`` with the recipe's safety settings (no remote code unless asked)."""
    attention = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    return auto_class.from_pretrained(
        checkpoint_path(model_args, checkpoint), config=config, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        **checkpoint_kwargs(model_args), **attention,
    )


def load_tokenizer(model_args, checkpoint: str | None = None):
    """``AutoTokenizer.from_pretrained`` for the checkpoint, with the same revision, cache and remote-code setting."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoint_path(model_args, checkpoint), **checkpoint_kwargs(model_args))


def load_image_processor(model_args, checkpoint: str | None = None):
    """``AutoImageProcessor.from_pretrained`` for the checkpoint, with the same revision, cache and remote-code setting."""
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(checkpoint_path(model_args, checkpoint), **checkpoint_kwargs(model_args))
