"""Generation for causal language models: batched greedy answers, their scores, and scoring during evaluation.

* :func:`generate_answers` turns prompts (rendered strings, or chats rendered through the tokenizer's chat
  template) into the new text a model generates for each, greedily, in left-padded batches.
* :func:`score_generations` scores answers against references: exact match after SQuAD-style normalisation
  (:func:`normalize_answer`) and ROUGE-L F1 from the ``rouge-score`` package, in total and per example;
  :func:`worst_examples_table` is the report's markdown table of the lowest-scoring ones.
* :class:`GenerationEvalMixin` makes a ``Trainer`` generate for the first N validation prompts at every
  evaluation and add ``eval_exact_match`` / ``eval_rougeL`` to its metrics, logged with the loss and usable as
  ``metric_for_best_model``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.utils import gather_object
from rouge_score import rouge_scorer

from ftlib.training.trainer import FtTrainer

Message = dict[str, str]
Prompt = str | list[Message] | list[int]  # text, chat turns, or token ids already rendered as in training


# -- generation ---------------------------------------------------------------------------------------------------
@contextmanager
def _left_padding(tokenizer):
    """The tokenizer pads on the left (a decoder continues from the last prompt token, so padding must come
    first) and has a pad token (the EOS token when it has none); both restored afterwards."""
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if pad is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad token nor an EOS token: batched generation needs one")
        tokenizer.pad_token = tokenizer.eos_token
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = side
        if pad is None:
            tokenizer.pad_token = None


def encode_prompt(tokenizer, prompt: Prompt, chat: bool) -> list[int]:
    """Token ids of one prompt. A message list is rendered with the tokenizer's chat template and the generation
    prompt (the assistant turn's opening); with ``chat`` a string is taken as one user turn; otherwise a string is
    tokenized as it is, with the tokenizer's special tokens (BOS) as in training."""
    if isinstance(prompt, list) and all(isinstance(token, int) for token in prompt) and prompt:
        return list(prompt)  # rendered and tokenized as in training (ftlib.tasks.causal_lm_data.encode_prompts)
    if isinstance(prompt, str) and chat:
        prompt = [{"role": "user", "content": prompt}]
    if isinstance(prompt, str):
        return tokenizer(prompt)["input_ids"]
    if tokenizer.chat_template is None:
        raise ValueError("a chat prompt needs a chat template, and this tokenizer has none")
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    # The template writes its own BOS where the model wants one: adding special tokens again would double it.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _eos_ids(model, tokenizer) -> list[int]:
    """Every token that ends an answer: the generation config's EOS ids (a chat model's end-of-turn) and the
    tokenizer's."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _up_to_eos(ids: list[int], eos: set[int]) -> list[int]:
    for position, token in enumerate(ids):
        if token in eos:
            return ids[:position]
    return ids


@torch.no_grad()
def generate_answers(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    chat: bool = False,
) -> list[str]:
    """The text ``model`` generates greedily after each prompt (the prompt itself left out), cut at the first EOS.

    Prompts are grouped by length into batches of ``batch_size``, left-padded; the answers come back in the
    prompts' order. Works on a plain model or a peft model; the model's train/eval mode and the tokenizer's
    padding side are restored afterwards. See :func:`encode_prompt` for ``chat``.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens ({max_new_tokens}) and batch_size ({batch_size}) must be at least 1")
    encoded = [encode_prompt(tokenizer, prompt, chat) for prompt in prompts]
    eos = _eos_ids(model, tokenizer)
    # Longest first, so each batch holds prompts of similar length (little padding) and a memory error shows early.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    answers: list[str] = [""] * len(encoded)
    was_training = model.training
    model.eval()
    try:
        with _left_padding(tokenizer):
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                inputs = tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt")
                inputs = {name: tensor.to(model.device) for name, tensor in inputs.items()}
                output = model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    # The model's own sampling settings (temperature, top_p) do not apply to greedy search; left in,
                    # they only make generate warn.
                    temperature=None, top_p=None, top_k=None,
                    eos_token_id=eos or None,
                    pad_token_id=tokenizer.pad_token_id,
                    # Gradient checkpointing turns the cache off in the config; generation wants it.
                    use_cache=True,
                )
                new_tokens = output[:, inputs["input_ids"].shape[1]:].tolist()
                for i, ids in zip(batch, new_tokens):
                    answers[i] = tokenizer.decode(_up_to_eos(ids, set(eos)), skip_special_tokens=True).strip()
    finally:
        model.train(was_training)
    return answers


# -- scoring ------------------------------------------------------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, punctuation and the articles a / an / the removed, whitespace collapsed."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when prediction and reference are equal after :func:`normalize_answer`, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


_ROUGE = rouge_scorer.RougeScorer(["rougeL"])


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (longest common subsequence of words, rouge-score's tokenizer, no stemming)."""
    return float(_ROUGE.score(reference, prediction)["rougeL"].fmeasure)


@dataclass
class GenerationScores:
    """Mean scores over a set of answers and each answer's own."""

    exact_match: float
    rougeL: float  # the metric's usual name, as it appears in the logs
    per_example: list[dict[str, float]] = field(default_factory=list)

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """``{prefix}exact_match`` and ``{prefix}rougeL``, the shape Trainer logs."""
        return {f"{prefix}exact_match": self.exact_match, f"{prefix}rougeL": self.rougeL}


def score_generations(predictions: Sequence[str], references: Sequence[str]) -> GenerationScores:
    """Exact match and ROUGE-L of each prediction against its reference, and their means."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    per_example = [
        {"exact_match": exact_match(p, r), "rougeL": rouge_l(p, r)} for p, r in zip(predictions, references)
    ]
    n = len(per_example)
    return GenerationScores(
        exact_match=sum(s["exact_match"] for s in per_example) / n,
        rougeL=sum(s["rougeL"] for s in per_example) / n,
        per_example=per_example,
    )


def prompt_text(prompt: Prompt) -> str:
    """A prompt as one line of text for a table: a chat's turns as ``role: content``."""
    if isinstance(prompt, str):
        return prompt
    if prompt and all(isinstance(token, int) for token in prompt):
        return f"({len(prompt)} tokens)"
    return " / ".join(f"{turn.get('role', '?')}: {turn.get('content', '')}" for turn in prompt)


def _cell(text: str, limit: int = 160) -> str:
    """One markdown table cell: on one line, shortened, pipes escaped."""
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|")


def worst_examples_table(
    prompts: Sequence[Prompt],
    references: Sequence[str],
    predictions: Sequence[str],
    scores: GenerationScores,
    k: int = 10,
) -> str:
    """Markdown: the ``k`` examples with the lowest ROUGE-L (ties: in input order), with prompt, reference,
    generated answer and both scores."""
    worst = sorted(range(len(predictions)), key=lambda i: (scores.per_example[i]["rougeL"], i))[:k]
    lines = ["| # | prompt | reference | generated | exact match | ROUGE-L |", "|---|---|---|---|---|---|"]
    for rank, i in enumerate(worst, 1):
        s = scores.per_example[i]
        lines.append(
            f"| {rank} | {_cell(prompt_text(prompts[i]))} | {_cell(references[i])} | {_cell(predictions[i])} | "
            f"{s['exact_match']:.0f} | {s['rougeL']:.3f} |"
        )
    return "\n".join(lines) + "\n"


# -- during training ----------------------------------------------------------------------------------------------
@dataclass
class GenerationEval:
    """What to generate at each evaluation (``--generation_eval N``: the first N validation prompts and their
    reference answers), and the last evaluation's answers and scores (for the report's table)."""

    prompts: list[Prompt]
    references: list[str]
    max_new_tokens: int = 128
    batch_size: int = 8
    chat: bool = False
    metric_key_prefix: str = "eval"  # only the evaluation that logs under this prefix generates
    prompt_texts: list[str] | None = None  # how token-id prompts read in the table (their rendered text)
    last_predictions: list[str] | None = None
    last_scores: GenerationScores | None = None

    def __post_init__(self):
        if len(self.prompts) != len(self.references):
            raise ValueError(f"generation eval: {len(self.prompts)} prompts for {len(self.references)} references")
        if not self.prompts:
            raise ValueError("generation eval: no prompts (is the validation set empty?)")

    def table(self, k: int = 10) -> str:
        """The worst-examples table of the last evaluation ('' before the first)."""
        if self.last_predictions is None or self.last_scores is None:
            return ""
        shown = self.prompt_texts or self.prompts
        return worst_examples_table(shown, self.references, self.last_predictions, self.last_scores, k)


def distributed_generate(accelerator, model, tokenizer, spec: GenerationEval) -> list[str]:
    """:func:`generate_answers` for ``spec.prompts``, each process taking a contiguous share, gathered back in order
    on every process.

    Shares are padded to equal length (accelerate's ``split_between_processes``) so that every process runs the
    same number of batches: with FSDP or DeepSpeed ZeRO-3 each forward is a collective, and transformers'
    ``generate`` already keeps sharded processes stepping together (``synced_gpus``) within a batch.
    """
    indices = list(range(len(spec.prompts)))
    with accelerator.split_between_processes(indices, apply_padding=True) as mine:
        answers = generate_answers(
            model, tokenizer, [spec.prompts[i] for i in mine],
            max_new_tokens=spec.max_new_tokens, batch_size=spec.batch_size, chat=spec.chat,
        )
        pairs = list(zip(mine, answers))
    if accelerator.num_processes > 1:
        pairs = gather_object(pairs)
    by_index = dict(pairs)  # the padding repeats the last index: the duplicates collapse here
    return [by_index[i] for i in indices]


class GenerationEvalMixin:
    """Mix into a ``Trainer`` (``class T(GenerationEvalMixin, FtTrainer)``) and pass ``generation_eval=
    GenerationEval(...)``: each evaluation then generates for its prompts and adds ``{prefix}_exact_match`` and
    ``{prefix}_rougeL`` to the metrics.

    Why ``evaluation_loop``: ``Trainer.evaluate`` logs the metrics it gets back from it, then hands them to the
    callbacks' ``on_evaluate``, then returns them to the best-model check. A callback would see them only after
    they were logged (they would miss the logs and ``log_history``); here they are in place before, so they are
    logged with ``eval_loss``, reach ``metric_for_best_model`` and the hyper-parameter search. ``predict``
    (description "Prediction") and evaluations under another prefix are left alone.

    Distributed: every process generates its share of the prompts and all get the same scores
    (:func:`distributed_generate`); the model used is the unwrapped one (``self.model``), never the DDP wrapper.
    """

    def __init__(self, *args, generation_eval: GenerationEval | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.generation_eval = generation_eval

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix: str = "eval"):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                         metric_key_prefix)
        spec = self.generation_eval
        if spec is not None and description == "Evaluation" and metric_key_prefix == spec.metric_key_prefix:
            output.metrics.update(self.generation_metrics(metric_key_prefix))
        return output

    def generation_metrics(self, metric_key_prefix: str = "eval") -> dict[str, Any]:
        """Generate for the spec's prompts now, keep the answers on the spec, return the prefixed scores."""
        spec = self.generation_eval
        tokenizer = self.processing_class
        predictions = distributed_generate(self.accelerator, self.model, tokenizer, spec)
        spec.last_predictions = predictions
        spec.last_scores = score_generations(predictions, spec.references)
        return spec.last_scores.metrics(f"{metric_key_prefix}_")


# -- the trainer and its evaluation ----------------------------------------------------------------------------
def answer_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row, ``[summed cross-entropy of its answer tokens, their count]`` (next-token prediction: the logits at
    position t score the label at t + 1; -100 labels do not count). Trainer's ``preprocess_logits_for_metrics``:
    two numbers per row cross the evaluation loop instead of a vocabulary-wide logit per token."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    per_token = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="none"
    ).view(labels.shape)
    return torch.stack([per_token.sum(1), (labels != -100).sum(1).to(per_token.dtype)], dim=1)


def answer_token_metrics(prediction) -> dict[str, float]:
    """``token_loss`` (the mean over every answer token of the split, not a mean of batch means) and its
    ``perplexity``, from :func:`answer_token_losses`' rows."""
    import math

    import numpy as np

    sums = np.asarray(prediction.predictions, dtype=np.float64).reshape(-1, 2).sum(0)
    loss = float(sums[0] / max(sums[1], 1.0))
    return {"token_loss": loss, "perplexity": math.exp(loss) if loss < 700 else math.inf}


class CausalLMTrainer(GenerationEvalMixin, FtTrainer):
    """FtTrainer for causal LMs: the model's token loss over a whole step (``model_token_loss``), eval perplexity on
    answer tokens, with ``generation_eval`` generated answers scored at each evaluation, and ``train_collator``
    (packing) for the training batches only."""

    def __init__(self, *args, train_collator=None, **kwargs):
        kwargs.setdefault("model_token_loss", True)
        kwargs.setdefault("preprocess_logits_for_metrics", answer_token_losses)
        kwargs.setdefault("compute_metrics", answer_token_metrics)
        super().__init__(*args, **kwargs)
        self.train_collator = train_collator  # packed training rows; evaluation stays unpacked (data_collator)

    def get_train_dataloader(self):
        if self.train_collator is None:
            return super().get_train_dataloader()
        evaluation, self.data_collator = self.data_collator, self.train_collator
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = evaluation
