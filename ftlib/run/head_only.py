"""``--compare_head_only``: a linear probe trained beside the fine-tuned run, the better of the two on validation
kept (Kumar et al. 2022, "Fine-tuning can distort pretrained features"). A step of running a recipe: it builds a
second trainer with the recipe's trainer function and writes into the run's output directory."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

from transformers import set_seed

from ftlib.run.cv import fold_args
from ftlib.strategy.small_data import PROBE_SETTINGS, probe_settings
from ftlib.tasks.metrics import eval_key

logger = logging.getLogger(__name__)

PROBE_DIR = "linear_probe"  # the probe's training log, inside the output directory
COMPARISON_FILE = "head_only_comparison.json"
MODEL_NAMES = {"fine_tuned": "fine-tuned", "head_only": "head only (linear probe)"}  # its "kept": key and wording
def wants_probe(trainer, ft_args) -> bool:
    """Whether ``--compare_head_only`` trains a linear probe beside this (trained) run: ``yes``; ``small`` when the
    step budget lengthened training (a small set), no flag conflicts (:meth:`FineTuneArguments.probe_conflicts`) and
    the run is not sharded (FSDP, DeepSpeed: ``yes`` is refused there by :func:`ftlib.run.launch.check_launch`)."""
    mode = ft_args.compare_head_only
    sharded = getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False)
    if mode == "no" or (mode == "small" and (ft_args.probe_conflicts() or sharded or not trainer.lengthened_by_budget)):
        return False
    if trainer.eval_dataset is None:
        logger.warning("--compare_head_only: no validation split to compare on; the fine-tuned model is kept")
        return False
    return True


def compare_head_only(trainer, build, train_data, ft_args) -> tuple[Any, dict[str, float] | None]:
    """``--compare_head_only``: after ``trainer`` (the run, trained) train a linear probe with the same steps and seed
    (``build(args, train_data, ft_args=...)``: the recipe's trainer function, in ``linear_probe/``), evaluate both on
    the validation split and keep the better (:func:`choose_model`: the run's ``metric_for_best_model``, then the
    lower loss). Few labelled images of the kind the backbone was pretrained on are often classified better by
    the pretrained features left as they are than after fine-tuning them (Kumar et al. 2022, "Fine-tuning can
    distort pretrained features"), while data unlike the pretraining needs the fine-tuning.

    Returns ``(kept trainer, its train metrics or None when the fine-tuned run is kept)``; when the probe wins it
    writes to the run's output directory from then on, and ``ft_args`` is set to the probe's strategy (for the
    model card and the saved model). ``head_only_comparison.json`` in the output directory holds both evaluations."""
    args = trainer.args
    output_dir = Path(args.output_dir)
    metric = eval_key(args.metric_for_best_model or "loss")
    greater = args.greater_is_better if args.greater_is_better is not None else metric != "eval_loss"
    fine_tuned = trainer.evaluate()

    probe_ft = probe_settings(ft_args)
    set_seed(args.seed)  # the probe starts from the state the run started from
    probe = build(fold_args(args, output_dir / PROBE_DIR), train_data, ft_args=probe_ft)
    logger.info("--compare_head_only: training a linear probe (the head alone, learning rate %g) to compare on %s",
                ft_args.probe_learning_rate, metric)
    probe_train = dict(probe.train().metrics)
    probed = probe.evaluate()
    if trainer.is_world_process_zero():  # --load_best_model_at_end's checkpoints: the probe is in memory
        for checkpoint in (output_dir / PROBE_DIR).glob("checkpoint-*"):
            shutil.rmtree(checkpoint, ignore_errors=True)

    kept, reason = choose_model(fine_tuned, probed, metric, greater)
    probe_wins = kept == "head_only"
    logger.info("--compare_head_only: %s %.4f (loss %.4f) fine-tuned, %.4f (loss %.4f) head only: keeping the %s "
                "model (%s)", metric, fine_tuned.get(metric, math.nan), fine_tuned.get("eval_loss", math.nan),
                probed.get(metric, math.nan), probed.get("eval_loss", math.nan), MODEL_NAMES[kept], reason)
    if trainer.is_world_process_zero():
        document = {"metric": metric, "greater_is_better": greater, "kept": kept, "reason": reason,
                    "fine_tuned": fine_tuned, "head_only": {**probed, "probe_learning_rate": ft_args.probe_learning_rate}}
        (output_dir / COMPARISON_FILE).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    if not probe_wins:
        probe.model_wrapped = probe.model = None
        return trainer, None
    for name in (*PROBE_SETTINGS, "head_learning_rate"):
        setattr(ft_args, name, getattr(probe_ft, name))
    probe.args.output_dir = str(output_dir)  # predictions, the model and its card go where the run's would
    trainer.model_wrapped = trainer.model = None
    return probe, probe_train


def choose_model(fine_tuned: dict[str, float], probed: dict[str, float], metric: str, greater: bool) -> tuple[str, str]:
    """``(kept, reason)`` from the two evaluations on validation: ``"fine_tuned"`` or ``"head_only"``.

    The better ``metric`` wins (a missing or diverged, NaN, value ranks last). On a tie, the lower loss, but not
    when both classified every validation example correctly (``eval_accuracy`` 1): with no error to penalise
    overconfidence the loss only rewards confidence, which fine-tuning buys by rescaling the features, so the loss
    would always favour it; the probe, which left the pretrained model as it was, is kept then. Last, fine-tuned."""

    def finite(value: float, sign: float) -> float:
        return sign * value if math.isfinite(value) else -math.inf

    sign = 1.0 if greater else -1.0
    scores = {kind: finite(m.get(metric, math.nan), sign) for kind, m in (("fine_tuned", fine_tuned), ("head_only", probed))}
    if scores["fine_tuned"] != scores["head_only"]:
        return max(scores, key=scores.get), f"better {metric}"
    if fine_tuned.get("eval_accuracy") == probed.get("eval_accuracy") == 1.0:
        return "head_only", "both classified every validation example correctly: the unchanged pretrained model"
    losses = {kind: finite(m.get("eval_loss", math.nan), -1.0) for kind, m in (("fine_tuned", fine_tuned), ("head_only", probed))}
    if losses["fine_tuned"] != losses["head_only"]:
        return max(losses, key=losses.get), f"same {metric}, lower loss"
    return "fine_tuned", f"same {metric} and loss"


def comparison_card(output_dir: str | Path) -> list[str]:
    """The model card's lines on ``--compare_head_only`` (none without ``head_only_comparison.json``)."""
    path = Path(output_dir) / COMPARISON_FILE
    if not path.is_file():
        return []
    comparison = json.loads(path.read_text(encoding="utf-8"))
    metric = comparison["metric"]
    rows = [f"| {name} | {comparison[kind].get(metric, math.nan):.4f} | {comparison[kind].get('eval_loss', math.nan):.4f} |"
            for kind, name in MODEL_NAMES.items()]
    about = (f"Two models were trained with the same steps and seed, the whole model fine-tuned and the head alone on "
             f"the frozen pretrained model (learning rate {comparison['head_only']['probe_learning_rate']:g}); the "
             f"{MODEL_NAMES[comparison['kept']]} one is this model, kept on the validation split "
             f"({comparison.get('reason', 'the better score')}).")
    return ["## Fine-tuned or linear probe", "", about, "", f"| model | {metric} | eval_loss |", "|---|---|---|",
            *rows, ""]
