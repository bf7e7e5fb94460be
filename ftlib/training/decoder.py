"""What a causal language model needs before the strategy core sees it: how it loads (dtype, attention kernel,
4-bit QLoRA), a pad token, and tokens added to its vocabulary.

The recipe calls, in this order (see each function)::

    check_load_in_4bit(model_args, ft_args, training_args)           # first: refuses before anything loads
    checkpoint = prepare_checkpoint(model_args, training_args)        # short names and GGUF files converted once
    tokenizer = load_tokenizer(model_args, checkpoint)
    model = load_causal_lm(model_args, checkpoint, training_args)
    describe_pad_token(tokenizer, model)                              # sets one only where there is none
    new_ids = add_tokens(tokenizer, model, markers)                   # e.g. a new chat template's markers
    token_rows = new_token_training(new_ids, ft_args)                 # refuses when they could not train
    model, anatomy = prepare_model(model, ft_args, task_type="CAUSAL_LM", trainable_token_indices=token_rows)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

from ftlib.training.modeling import checkpoint_kwargs

logger = logging.getLogger(__name__)

# --- loading ---------------------------------------------------------------------------------------


def check_load_in_4bit(model_args, ft_args, training_args=None) -> None:
    """Refuse ``--load_in_4bit`` where it cannot run, naming why: without CUDA (bitsandbytes' 4-bit kernels are
    CUDA's), with ``--use_cpu``, without ``--lora`` (a 4-bit model trains through adapters only), without
    bitsandbytes. Call it before anything loads: nothing else is spent on a run that would fail here."""
    if not getattr(model_args, "load_in_4bit", False):
        return
    if not ft_args.lora:
        raise ValueError("--load_in_4bit (QLoRA) trains LoRA adapters on a frozen 4-bit model: add --lora")
    if training_args is not None and training_args.use_cpu:
        raise ValueError("--load_in_4bit needs a CUDA GPU (bitsandbytes' NF4 kernels), and --use_cpu asks for the CPU")
    _require_4bit_support()


def _require_4bit_support() -> None:
    if not torch.cuda.is_available():
        raise ValueError("--load_in_4bit needs a CUDA GPU (bitsandbytes' NF4 kernels run on CUDA only), and torch sees "
                         "none here (torch.cuda.is_available() is False); drop --load_in_4bit to train LoRA on the "
                         "full-precision model")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ValueError(f"--load_in_4bit needs bitsandbytes: pip install bitsandbytes ({err})") from None


def quantization_config(model_args):
    """The ``BitsAndBytesConfig`` of ``--load_in_4bit`` (QLoRA: NF4 weights, double quantization, bf16
    compute), or None without it; refused, naming why, where there is no CUDA or no bitsandbytes."""
    if not getattr(model_args, "load_in_4bit", False):
        return None
    _require_4bit_support()
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def causal_lm_load_kwargs(model_args, training_args=None) -> dict:
    """``from_pretrained`` keywords beyond the checkpoint's: float32 weights (``--bf16`` / ``--fp16`` are mixed
    precision over them, as Trainer does it), ``--attn_implementation``, and for ``--load_in_4bit`` the
    quantization config, bf16 for the parts that stay unquantized, and this process's GPU."""
    kwargs: dict = {"dtype": torch.float32}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    quantization = quantization_config(model_args)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["dtype"] = torch.bfloat16
        # each process of a DDP run loads its own copy on its own GPU
        device = training_args.local_process_index if training_args is not None else 0
        kwargs["device_map"] = {"": device}
    return kwargs


def load_causal_lm(model_args, checkpoint: str, training_args=None) -> nn.Module:
    """``AutoModelForCausalLM`` from ``checkpoint`` (what :func:`ftlib.training.checkpoints.prepare_checkpoint` returned)
    with :func:`causal_lm_load_kwargs`; a 4-bit model is made ready for training as peft does it
    (``prepare_model_for_kbit_training``: norms and embeddings in float32, input gradients for checkpointing)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        checkpoint, **checkpoint_kwargs(model_args), **causal_lm_load_kwargs(model_args, training_args)
    )
    if getattr(model_args, "load_in_4bit", False):
        from peft import prepare_model_for_kbit_training

        checkpointing = bool(training_args is not None and training_args.gradient_checkpointing)
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs=(training_args.gradient_checkpointing_kwargs if checkpointing else None),
        )
    return model


# --- pad token -------------------------------------------------------------------------------------

# Tokens that some vocabularies reserve for padding, tried before the unknown and end-of-sequence tokens.
PAD_CANDIDATES = ("<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>", "<|fim_pad|>", "<|padding|>")


def ensure_pad_token(tokenizer, model: nn.Module | None = None) -> str | None:
    """Give ``tokenizer`` a pad token where it has none, never adding one to the vocabulary (which would grow the
    embeddings): a token the vocabulary reserves for padding (:data:`PAD_CANDIDATES`), else its unknown token,
    else its end-of-sequence token. ``model``'s config and generation config get its id. Returns the token chosen,
    or None when the tokenizer had one.

    Padding is masked by the attention mask, never by token id: where pad is the end-of-sequence token, a
    collator that dropped every ``pad_token_id`` from the labels would also drop the real end of each answer,
    and the model would never learn to stop."""
    if tokenizer.pad_token is not None:
        _set_model_pad(model, tokenizer.pad_token_id)
        return None
    vocab = tokenizer.get_vocab()
    reserved = [token for token in PAD_CANDIDATES if token in vocab]
    chosen = reserved[0] if reserved else tokenizer.unk_token or tokenizer.eos_token
    if chosen is None:
        raise ValueError(
            f"the tokenizer of {getattr(tokenizer, 'name_or_path', '?')} has no pad token, no unknown token and no "
            "end-of-sequence token to pad with; name one of its tokens in its tokenizer_config.json (pad_token)"
        )
    tokenizer.pad_token = chosen
    _set_model_pad(model, tokenizer.pad_token_id)
    logger.info("the tokenizer has no pad token: padding with %r (id %d), one of its own tokens; padding is masked "
                "by the attention mask", chosen, tokenizer.pad_token_id)
    return chosen


def _set_model_pad(model: nn.Module | None, pad_id: int) -> None:
    if model is None:
        return
    model.config.pad_token_id = pad_id
    generation = getattr(model, "generation_config", None)
    if generation is not None and generation.pad_token_id is None:
        generation.pad_token_id = pad_id


# --- added tokens ----------------------------------------------------------------------------------


def add_tokens(tokenizer, model: nn.Module | None, tokens: Iterable[str]) -> list[int]:
    """Add the ``tokens`` the tokenizer lacks as special tokens (a chat template's markers: never split, never
    normalised) and grow ``model``'s embeddings (and untied LM head) to the new vocabulary, the new rows set to
    the mean of the old ones (transformers' ``mean_resizing``). Returns the new ids, empty when none was missing.

    The new rows are untrained: they must train, see :func:`new_token_training`."""
    vocab = tokenizer.get_vocab()
    missing = list(dict.fromkeys(t for t in tokens if t not in vocab))
    if not missing:
        return []
    tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    new_ids = tokenizer.convert_tokens_to_ids(missing)
    if model is not None:  # None: the tokenizer now, the model when it loads (fit_embeddings)
        fit_embeddings(tokenizer, model)
    logger.info("added %d token(s) to the vocabulary: %s (ids %s); their embedding rows are new and train",
                len(missing), ", ".join(missing), ", ".join(map(str, new_ids)))
    return new_ids


def fit_embeddings(tokenizer, model: nn.Module) -> None:
    """Grow ``model``'s embeddings (and untied LM head) to the tokenizer's vocabulary, new rows at the mean of the
    old ones (transformers' ``mean_resizing``); nothing when they are large enough already."""
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)


def lm_head_trains(ft_args, config, new_ids: list[int]) -> bool:
    """Whether any weight of the LM head trains (else a head learning rate changes nothing, and the search leaves it
    out): under LoRA only the rows of added tokens do; in full fine-tuning all of it, unless it is the input
    embedding matrix (tied) and --freeze_embeddings freezes that."""
    if ft_args.lora:
        return bool(new_ids)
    return not (ft_args.freeze_embeddings and getattr(config, "tie_word_embeddings", False))


def new_token_training(new_ids: list[int], ft_args) -> list[int] | None:
    """How the rows of the tokens :func:`add_tokens` added train, or a refusal naming why they cannot.

    Full fine-tuning trains them with the whole embedding matrix: None. LoRA freezes the embeddings, so these
    rows train on their own (peft's trainable tokens, in the input embeddings and the LM head): their ids, for
    ``prepare_model(..., trainable_token_indices=...)``. Flags that freeze the embeddings would leave them at
    their initial mean: refused."""
    if not new_ids:
        return None
    freezing = [flag for flag, on in (("--freeze_embeddings", ft_args.freeze_embeddings),
                                      ("--freeze_lower_blocks", ft_args.freeze_lower_blocks > 0),
                                      ("--train_top_blocks", ft_args.train_top_blocks is not None),
                                      ("--head_only", ft_args.head_only)) if on]
    if freezing:
        raise ValueError(
            f"{len(new_ids)} token(s) were added to the vocabulary (ids {', '.join(map(str, new_ids))}): their "
            f"embedding rows are new and must train, but {', '.join(freezing)} freeze(s) the embeddings; drop "
            f"{'it' if len(freezing) == 1 else 'them'}, or use a chat template whose markers the tokenizer already has"
        )
    if ft_args.gradual_unfreeze:
        logger.warning("gradual unfreezing thaws the input embeddings last (unless tied to the LM head): the %d added "
                       "token(s) keep their initial input rows until then", len(new_ids))
    return list(new_ids) if ft_args.lora else None
