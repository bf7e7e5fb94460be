"""--extra_metrics: any evaluate module (here local module scripts written by the test, offline) computed at every
evaluation of every recipe next to the built-in metrics; one that does not load fails before anything else."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_flags import image_data, model_for, parse, recipe, text_data, token_data

from ftlib.tasks.metrics import compute_metrics_fn, load_extra_metrics

SAME = '''
import datasets
import evaluate


class Agreement(evaluate.Metric):
    """Share of predictions equal to the reference, and how many there were."""

    def _info(self):
        return evaluate.MetricInfo(
            description="agreement", citation="", inputs_description="",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        same = sum(int(p == r) for p, r in zip(predictions, references))
        return {"agreement": same / len(references), "count": len(references), "per_row": [int(p == r) for p, r in zip(predictions, references)]}
'''

WORDS = '''
import datasets
import evaluate


class Words(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="words", citation="", inputs_description="",
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("string")),
                                        "references": datasets.Sequence(datasets.Value("string"))}),
        )

    def _compute(self, predictions, references):
        return {"words": sum(len(r) for r in references),
                "tagged": {"same": sum(p == r for ps, rs in zip(predictions, references) for p, r in zip(ps, rs))}}
'''


def module(root: Path, name: str, source: str) -> Path:
    """An evaluate module folder ``root/name`` holding ``name.py``."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(source)
    return folder


def test_extra_metrics_join_the_built_in_ones(tmp_path):
    extra = load_extra_metrics([str(module(tmp_path, "agreement", SAME))])
    compute = compute_metrics_fn("single_label_classification", ["a", "b", "c"], extra)
    logits = np.array([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0], [3.0, 0, 0]])
    eval_pred = type("EvalPrediction", (), {"predictions": logits, "label_ids": np.array([0, 1, 1, 1])})()
    metrics = compute(eval_pred)
    assert metrics["accuracy"] == 0.5 and metrics["agreement"] == 0.5 and metrics["agreement_count"] == 4.0
    assert "agreement_per_row" not in metrics  # a list is not a number Trainer can log


def test_a_module_that_does_not_load_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "no_such_metric"
    with pytest.raises(ValueError, match=rf"--extra_metrics {missing}: cannot load the evaluate module"):
        load_extra_metrics([str(missing)])
    assert load_extra_metrics(None) is None and load_extra_metrics([]) is None


def run(name, argv, tmp_path, tiny_bert_dir, tiny_vit_dir, data) -> tuple[dict, Path]:
    torch.set_num_threads(1)
    out = tmp_path / "out"
    argv = [
        "--model_name_or_path", str(model_for(name, tiny_bert_dir, tiny_vit_dir)), *data(tmp_path),
        "--output_dir", str(out), "--use_cpu", "true", "--max_steps", "2", "--save_strategy", "no",
        "--per_device_train_batch_size", "4", "--disable_tqdm", "true", "--dataloader_pin_memory", "false",
        "--dataloader_num_workers", "0", "--report_to", "none", *argv,
    ]
    recipe(name).main(*parse(name, argv))
    return json.loads((out / "all_results.json").read_text()), out


@pytest.mark.parametrize("name, data", [("text_cls", text_data), ("image_cls", image_data)])
def test_every_evaluation_of_the_classification_recipes(name, data, tmp_path, tiny_bert_dir, tiny_vit_dir):
    agreement = module(tmp_path / "metrics", "agreement", SAME)
    results, _ = run(name, ["--extra_metrics", str(agreement)], tmp_path, tiny_bert_dir, tiny_vit_dir, data)
    # the validation split is held out of train (10% of 24 or 12 rows), the test split has 4 labelled rows
    assert results["eval_agreement"] == results["eval_accuracy"] and results["eval_agreement_count"] in (2.0, 3.0)
    assert results["test_agreement"] == results["test_accuracy"] and results["test_agreement_count"] == 4.0
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert any("eval_agreement" in entry for entry in state["log_history"])  # the per-epoch evaluation too


def test_every_evaluation_of_the_token_recipe(tmp_path, tiny_bert_dir, tiny_vit_dir):
    words = module(tmp_path / "metrics", "words", WORDS)
    results, _ = run("token_cls", ["--extra_metrics", str(words), "--validation_file", str(tmp_path / "test.conll")],
                     tmp_path, tiny_bert_dir, tiny_vit_dir, token_data)
    assert results["eval_words"] == results["test_words"] == 48.0  # 12 sentences of 4 words: word-level tags
    assert 0 <= results["eval_words_tagged_same"] <= 48 and results["eval_words_tagged_same"] == round(
        results["eval_accuracy"] * 48)


def test_a_module_that_does_not_load_fails_before_the_data_or_model(tmp_path, tiny_bert_dir, tiny_vit_dir):
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=rf"--extra_metrics {missing}"):
        # the train file does not exist either: the metric is checked first
        recipe("text_cls").main(*parse("text_cls", [
            "--model_name_or_path", str(tiny_bert_dir), "--train_file", str(tmp_path / "absent.csv"),
            "--output_dir", str(tmp_path / "out"), "--use_cpu", "true", "--extra_metrics", str(missing),
        ]))
