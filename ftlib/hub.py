"""Model card and Hub push: the exact folder to upload, a quality gate, tokens kept out of every file.

Recipes push once, at the end, after evaluation (Trainer's own ``push_to_hub`` would push checkpoints
during training, before the quality gate could look at the final metric). The token comes from
``--hub_token``, ``HF_TOKEN`` or ``huggingface-cli login``; it is taken off ``TrainingArguments``
before anything is saved, and never printed.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# What a pushed repo never gets: training state, optimizer moments, pickles, logs.
NOT_PUSHED = ("checkpoint-*", "runs", "*.pt", "*.pth", "*.bin", "trainer_state.json", ".ftlib-*", "*.lock")


@dataclass
class HubSettings:
    push: bool
    repo_id: str | None
    private: bool | None
    revision: str | None
    token: str | None

    def __repr__(self) -> str:  # never show the token, even in a traceback or a debugger
        return f"HubSettings(push={self.push}, repo_id={self.repo_id!r}, private={self.private}, revision={self.revision!r})"


def take_hub_settings(training_args) -> HubSettings:
    """Move the Hub flags off ``TrainingArguments`` so Trainer neither pushes mid-run nor saves the token
    into ``training_args.bin``; the recipe pushes at the end with :func:`push_output`."""
    settings = HubSettings(
        push=bool(training_args.push_to_hub),
        repo_id=training_args.hub_model_id or (Path(training_args.output_dir).name if training_args.push_to_hub else None),
        private=training_args.hub_private_repo,
        revision=training_args.hub_revision,
        token=training_args.hub_token,
    )
    training_args.push_to_hub = False
    training_args.hub_token = None
    return settings


def files_to_push(output_dir: str | Path) -> list[Path]:
    """The files of ``output_dir`` that make up the published model, sorted, relative to it."""
    root = Path(output_dir)
    chosen = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_dir() or any(fnmatch.fnmatch(part, pat) for part in rel.parts for pat in NOT_PUSHED):
            continue
        chosen.append(rel)
    return chosen


def quality_gate(metrics: dict[str, float], metric: str, threshold: float | None, greater_is_better: bool) -> None:
    """Raise when the evaluation metric is worse than ``threshold`` (below it, or above it for a loss)."""
    if threshold is None:
        return
    key = metric if metric.startswith("eval_") else f"eval_{metric}"
    if key not in metrics:
        raise ValueError(f"--push_min_metric: no '{key}' among the evaluation results ({', '.join(sorted(metrics))})")
    value = metrics[key]
    worse = value < threshold if greater_is_better else value > threshold
    if worse or math.isnan(value):  # NaN never passes
        relation = "below" if greater_is_better else "above"
        raise ValueError(f"not pushing: {key} = {value:.4f} is {relation} the quality gate --push_min_metric={threshold}")


def push_output(output_dir: str | Path, settings: HubSettings, commit_message: str = "Upload fine-tuned model") -> str:
    """Create the repo (private if asked), the branch when a revision is given, and upload the files of
    :func:`files_to_push`. Returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=settings.token)
    api.create_repo(settings.repo_id, private=settings.private, exist_ok=True, repo_type="model")
    if settings.revision and settings.revision != "main":
        api.create_branch(settings.repo_id, branch=settings.revision, exist_ok=True)
    files = [str(p) for p in files_to_push(output_dir)]
    commit = api.upload_folder(
        repo_id=settings.repo_id,
        folder_path=str(output_dir),
        revision=settings.revision,
        allow_patterns=files,
        commit_message=commit_message,
    )
    logger.info("pushed %d files to %s", len(files), settings.repo_id)
    return str(getattr(commit, "commit_url", commit))


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_model_card(
    output_dir: str | Path,
    *,
    base_model: str,
    task: str,
    dataset: str,
    metrics: dict[str, Any],
    strategy: dict[str, Any],
    group_table: str = "",
    library: str = "transformers",
    label_names: list[str] | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write ``README.md``: Hub metadata, then the data, base checkpoint, strategy and metrics in prose."""
    headline = {k: v for k, v in metrics.items() if k.startswith(("eval_", "test_")) and "runtime" not in k
                and "per_second" not in k}
    meta = {
        "library_name": library,
        "base_model": base_model,
        "pipeline_tag": task,
        "tags": ["ftlib", "fine-tuned", task],
    }
    lines = ["---"] + [f"{k}: {json.dumps(v)}" for k, v in meta.items()] + ["---", ""]
    title = repo_id or Path(output_dir).name
    lines += [
        f"# {title}",
        "",
        (f"`{base_model}` fine-tuned for {task.replace('-', ' ')} on {dataset} with "
         "[ftlib](https://github.com/ftlib/ftlib)."),
        "",
    ]
    if label_names:
        lines += [f"Labels: {', '.join(f'`{n}`' for n in label_names)}.", ""]
    lines += ["## Results", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(headline.items())] or ["| (none) | |"]
    lines += ["", "## Fine-tuning strategy", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in strategy.items()]
    if group_table:
        lines += ["", "Optimizer parameter groups at the start of training:", "", "```", group_table, "```"]
    path = Path(output_dir) / "README.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
