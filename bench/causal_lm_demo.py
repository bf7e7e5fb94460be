"""Before and after the causal-LM demo: the base SmolLM2-135M-Instruct and the demo's fine-tuned output answer the
same test tickets (greedy); prints a few answers of each and the exact-match / ROUGE-L of both on the test split.

    python recipes/causal_lm.py --config recipes/configs/causal_lm/demo.yaml
    python bench/causal_lm_demo.py --output outputs/causal_lm_demo [--rows 80] [--show 3]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ftlib.tasks.causal_lm_generate import generate_answers, score_generations
from ftlib.tasks.causal_lm_predict import load_for_generation
from ftlib.training.checkpoints import resolve_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="outputs/causal_lm_demo", help="the demo run's output directory")
    parser.add_argument("--test_file", default=str(ROOT / "recipes/data/support_replies/test.jsonl"))
    parser.add_argument("--rows", type=int, default=80)
    parser.add_argument("--show", type=int, default=3)
    parser.add_argument("--max_new_tokens", type=int, default=48)
    args = parser.parse_args()
    rows = [json.loads(line) for line in Path(args.test_file).read_text(encoding="utf-8").splitlines()][: args.rows]
    prompts = [row["messages"][:-1] for row in rows]
    references = [row["messages"][-1]["content"] for row in rows]
    results = {}
    for name, folder in (("base", resolve_checkpoint("smollm2-135m-instruct")), ("fine-tuned", args.output)):
        model, tokenizer = load_for_generation(folder, device="cpu")
        start = time.perf_counter()
        answers = generate_answers(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, batch_size=16)
        scores = score_generations(answers, references)
        results[name] = (answers, scores, time.perf_counter() - start)
    for i in range(args.show):
        print(f"\n### {rows[i]['messages'][-2]['content']}")
        for name, (answers, _, _) in results.items():
            print(f"- {name}: {answers[i]!r}")
    print("\n| model | exact match | ROUGE-L | test rows | generation s |\n|---|---|---|---|---|")
    for name, (_, scores, seconds) in results.items():
        metrics = scores.metrics("")
        print(f"| {name} | {metrics['exact_match']:.3f} | {metrics['rougeL']:.3f} | {len(rows)} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
