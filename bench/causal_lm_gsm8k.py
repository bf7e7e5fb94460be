"""GSM8K: exact match of the final number on test questions (../shared/data/gsm8k/test.jsonl), greedy, for the base
SmolLM2-135M-Instruct and for fine-tuned outputs of recipes/causal_lm.py (an adapter or a model folder each), with the
prompt the fine-tuning used (bench/causal_lm_vs_sft.py's ``Question: ...\\nAnswer:\\n``).

    python bench/causal_lm_gsm8k.py --models runs/200/runs/ftlib [more folders] [--rows 200] [--max_new_tokens 256]

A small model scores low: the figure is a baseline for later runs.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from ftlib.tasks.causal_lm_generate import generate_answers
from ftlib.tasks.causal_lm_predict import load_for_generation
from ftlib.training.checkpoints import resolve_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TEST = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"
PROMPT = "Question: {question}\nAnswer:\n"  # as bench/causal_lm_vs_sft.py trains


def final_number(text: str) -> str | None:
    """The answer's final number: after GSM8K's ``####`` when present, else the last number in the text."""
    tail = text.split("####")[-1] if "####" in text else text
    numbers = re.findall(r"-?\d[\d,]*\.?\d*", tail)
    return numbers[-1].replace(",", "").rstrip(".") if numbers else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=[], help="fine-tuned output folders (adapter or model)")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--skip_base", action="store_true", help="only the --models (the base model measured before)")
    args = parser.parse_args()
    rows = [json.loads(line) for line in TEST.read_text(encoding="utf-8").splitlines()][: args.rows]
    prompts = [PROMPT.format(question=row["question"]) for row in rows]
    gold = [final_number(row["answer"]) for row in rows]
    print(f"GSM8K test, first {len(rows)} questions, greedy, up to {args.max_new_tokens} new tokens\n")
    print("| model | final-number exact match | generation s |\n|---|---|---|")
    base = ("SmolLM2-135M-Instruct (base)", str(resolve_checkpoint("smollm2-135m-instruct")))
    for name, folder in [*([] if args.skip_base else [base]), *((folder, folder) for folder in args.models)]:
        model, tokenizer = load_for_generation(folder, device="cpu")
        started = time.perf_counter()
        answers = generate_answers(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                                   batch_size=args.batch_size)
        right = sum(final_number(answer) == truth for answer, truth in zip(answers, gold))
        print(f"| {name} | {right / len(rows):.3f} ({right}/{len(rows)}) | {time.perf_counter() - started:.0f} |")


if __name__ == "__main__":
    main()
