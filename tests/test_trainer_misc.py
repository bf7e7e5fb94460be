"""FtTrainer's loss and safety nets (class weights, gradient accumulation, early stopping, non-finite loss),
and the small modules around a run: metrics, output directory, integrity manifest, Hub push."""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight
from transformers import AutoModelForSequenceClassification, TrainerCallback, TrainingArguments

from ftlib.outputs import hub, integrity
from ftlib.run.output_dir import prepare_output_dir
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.tasks import metrics
from ftlib.training.trainer import check_strategy_args, class_weights_from_labels

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}

# --- class weights ---------------------------------------------------------------------------------


def test_balanced_class_weights_match_sklearn():
    labels = [0, 0, 0, 1, 1, 0, 2, 2]
    weights = class_weights_from_labels("balanced", labels, num_labels=3)
    expected = compute_class_weight("balanced", classes=np.array([0, 1, 2]), y=np.array(labels))
    assert weights.tolist() == pytest.approx(expected.tolist())
    assert weights.tolist() == pytest.approx([8 / (3 * 4), 8 / (3 * 2), 8 / (3 * 2)])  # n / (classes * count)
    assert weights.dtype == torch.float32


def test_explicit_and_multi_label_class_weights():
    assert class_weights_from_labels("1,3.5", [0, 1], num_labels=2).tolist() == [1.0, 3.5]
    assert class_weights_from_labels(None, [0, 1], num_labels=2) is None
    with pytest.raises(ValueError, match="--class_weights has 3 values but there are 2 labels"):
        class_weights_from_labels("1,2,3", [0, 1], num_labels=2)
    with pytest.raises(ValueError, match=r"label ids \[2\] never occur"):
        class_weights_from_labels("balanced", [0, 1, 1], num_labels=3)
    # multi-label: positive weights = negatives / positives per label
    matrix = [[1, 0], [1, 1], [0, 0], [1, 0]]
    assert class_weights_from_labels("balanced", matrix, 2, multi_label=True).tolist() == pytest.approx(
        [1 / 3, 3.0]
    )
    with pytest.raises(ValueError, match=r"label ids \[1\] never occur"):
        class_weights_from_labels("balanced", [[1, 0], [1, 0]], 2, multi_label=True)


def test_class_weights_change_the_loss_exactly(make_core_trainer, core_data):
    rows = core_data(4, seed=5, labels=[0, 1, 1, 0])
    batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    weights = class_weights_from_labels("balanced", [0, 0, 0, 1], num_labels=2)  # [2/3, 2]
    weighted = make_core_trainer(class_weights=weights)
    plain = make_core_trainer()
    for trainer in (weighted, plain):
        trainer.model.eval()
        with torch.no_grad():  # confident logits: the rows' losses differ, so the weighting shows
            trainer.model.classifier.weight.mul_(40.0)
    with torch.no_grad():
        logits = plain.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        per_row = -torch.log_softmax(logits.double(), dim=-1)[torch.arange(4), batch["labels"]]
        w = weights.double()[batch["labels"]]
        expected_weighted = float((w * per_row).sum() / w.sum())
        expected_plain = float(per_row.mean())
        loss_weighted = float(weighted.compute_loss(weighted.model, dict(batch)))
        loss_plain = float(plain.compute_loss(plain.model, dict(batch)))
    assert loss_weighted == pytest.approx(expected_weighted, abs=1e-6)
    assert loss_plain == pytest.approx(expected_plain, abs=1e-6)
    assert abs(expected_weighted - expected_plain) > 1e-3  # the weights matter on this batch


@pytest.mark.parametrize("class_weights", [None, "1,3"])
def test_gradient_accumulation_gives_the_same_step(class_weights, make_core_trainer, core_data, tmp_path):
    """One SGD step on 8 examples: batch 8, or 2 x 4 accumulated, must move the weights the same way."""
    weights = class_weights_from_labels(class_weights, None, 2) if class_weights else None
    train = core_data(
        8, seed=2, labels=[0, 0, 0, 1] * 2
    )  # both halves hold the same labels: same weight sums
    deltas, losses = [], []
    for batch, accumulation in ((8, 1), (4, 2)):
        trainer = make_core_trainer(
            FineTuneArguments(torch_optimizer="SGD"),
            train=train,
            class_weights=weights,
            learning_rate=1.0,
            max_steps=1,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            max_grad_norm=0.0,
            train_sampling_strategy="sequential",
            logging_strategy="steps",
            logging_steps=1,
            output_dir=str(tmp_path / f"ga{accumulation}"),
            config=NO_DROPOUT,
        )
        before = trainer.model.classifier.weight.detach().clone()
        trainer.train()
        deltas.append(trainer.model.classifier.weight.detach() - before)
        losses.append(trainer.state.log_history[0]["loss"])
    assert deltas[0].abs().sum() > 0
    assert torch.allclose(deltas[1], deltas[0], rtol=1e-4, atol=1e-7), deltas[1] / deltas[0]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)  # the logged loss too


def _one_sgd_step(make_core_trainer, tmp_path, train, batch, accumulation, class_weights=None, name="", transform=None,
                  **kw):
    """The change of every parameter after one SGD step (lr 1, no clipping, sequential batches) and the logged loss."""
    trainer = make_core_trainer(
        FineTuneArguments(torch_optimizer="SGD"), train=train, class_weights=class_weights, learning_rate=1.0,
        max_steps=1, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation, max_grad_norm=0.0,
        train_sampling_strategy="sequential", logging_strategy="steps", logging_steps=1,
        output_dir=str(tmp_path / f"{name}{batch}x{accumulation}"), **kw,
    )
    trainer.train_batch_transform = transform
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    delta = {n: p.detach() - before[n] for n, p in trainer.model.named_parameters()}
    return delta, trainer.state.log_history[0]["loss"]


def _assert_same_step(a, b):
    assert max(d.abs().max() for d in a[0].values()) > 1e-4
    for name in a[0]:
        assert torch.allclose(a[0][name], b[0][name], rtol=1e-4, atol=1e-7), name
    assert a[1] == pytest.approx(b[1], rel=1e-5)  # the logged loss too


@pytest.mark.parametrize("rows", [8, 7])  # 7: the second micro-batch is short (4 + 3)
@pytest.mark.parametrize("problem", ["single", "multi"])
def test_accumulation_is_exact_with_class_weights(problem, rows, make_core_trainer, core_data, tmp_path):
    """Micro-batches whose class-weight sums differ (and a short last one): one batch of all rows and 4-row
    micro-batches accumulated take the same SGD step, because each micro-batch's weighted sum is divided by the
    weight of the whole accumulated batch, not by its own (a mean of per-micro-batch weighted means is not the
    weighted mean)."""
    train = core_data(rows, seed=2, labels=[0, 0, 0, 0, 1, 1, 1, 0][:rows])  # weights 4 x 1 vs 1 + 3 x 3
    config = {**NO_DROPOUT}
    if problem == "single":
        weights = class_weights_from_labels("1,3", None, 2)
    else:
        config["problem_type"] = "multi_label_classification"
        hot = [[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]
        train = [{**row, "labels": torch.tensor(hot[i])} for i, row in enumerate(train)]
        weights = class_weights_from_labels("balanced", hot[:rows], 2, multi_label=True)
    whole = _one_sgd_step(make_core_trainer, tmp_path, train, rows, 1, weights, config=config)
    accumulated = _one_sgd_step(make_core_trainer, tmp_path, train, 4, 2, weights, config=config)
    _assert_same_step(whole, accumulated)


def test_soft_one_hot_targets_take_the_hard_targets_step(make_core_trainer, core_data, tmp_path):
    """A mixup-style transform that only turns ids into one-hot rows changes nothing, class weights and unequal
    micro-batches included: soft and hard targets share the normaliser (their summed class weight)."""
    train = core_data(8, seed=2, labels=[0, 0, 0, 0, 1, 1, 1, 0])
    weights = torch.tensor([1.0, 3.0])
    hard = _one_sgd_step(make_core_trainer, tmp_path, train, 4, 2, weights, name="hard", config=NO_DROPOUT)
    soft = _one_sgd_step(make_core_trainer, tmp_path, train, 4, 2, weights, name="soft", config=NO_DROPOUT,
                         transform=lambda b: {**b, "labels": F.one_hot(b["labels"], 2).float()})
    _assert_same_step(hard, soft)


# --- early stopping and non-finite losses -------------------------------------------------------------


def test_early_stopping_stops_after_patience(make_core_trainer, core_data, tmp_path):
    scores = iter(
        [0.5, 0.7, 0.6, 0.7, 0.9, 0.95, 0.99, 1.0]
    )  # best at epoch 2, then 2 evaluations without gain

    def compute_metrics(_):
        return {"score": next(scores)}

    ft = FineTuneArguments(early_stopping_patience=2)
    settings = {
        "eval_strategy": "epoch",
        "save_strategy": "epoch",
        "load_best_model_at_end": True,
        "metric_for_best_model": "score",
        "greater_is_better": True,
        "num_train_epochs": 8,
        "max_steps": -1,
    }
    trainer = make_core_trainer(ft, train=core_data(8), eval=core_data(4, seed=9), **settings)
    check_strategy_args(trainer.args, ft)
    trainer.compute_metrics = compute_metrics
    trainer.train()
    assert trainer.state.epoch == 4.0 and trainer.state.global_step == 8  # 2 steps per epoch
    evaluated = [h["eval_score"] for h in trainer.state.log_history if "eval_score" in h]
    assert evaluated == [0.5, 0.7, 0.6, 0.7]
    assert trainer.state.best_metric == 0.7
    assert Path(trainer.state.best_model_checkpoint).name == "checkpoint-4"
    best = AutoModelForSequenceClassification.from_pretrained(trainer.state.best_model_checkpoint)
    assert torch.equal(best.classifier.weight, trainer.model.classifier.weight)  # the best model was loaded


def test_early_stopping_needs_evaluation(tmp_path):
    ft = FineTuneArguments(early_stopping_patience=2)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="--early_stopping_patience needs --eval_strategy"):
        check_strategy_args(args, ft)


class PoisonLogits(TrainerCallback):
    """From optimizer step ``at`` (1-based) on, the classifier outputs inf."""

    def __init__(self, model, at: int):
        self.active = False
        self.at = at
        model.classifier.register_forward_hook(
            lambda module, args, out: out + math.inf if self.active else out
        )

    def on_step_begin(self, args, state, control, **kwargs):
        self.active = state.global_step + 1 >= self.at


def test_non_finite_loss_stops_naming_the_step(make_core_trainer, tmp_path):
    trainer = make_core_trainer(save_strategy="steps", save_steps=2, max_steps=6)
    trainer.add_callback(PoisonLogits(trainer.model, at=3))
    with pytest.raises(FloatingPointError, match=r"non-finite training loss \(nan\) at step 3"):
        trainer.train()
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    saved = AutoModelForSequenceClassification.from_pretrained(out / "checkpoint-2")
    current = dict(trainer.model.named_parameters())
    for name, param in saved.named_parameters():
        assert torch.isfinite(param).all(), name
        assert torch.equal(param, current[name]), name  # step 3 did not update the weights


# --- metrics ---------------------------------------------------------------------------------------


def test_single_label_metrics_exact():
    m = metrics.single_label_metrics([0, 1, 1, 0], [0, 1, 0, 0], ["neg", "pos"])
    assert m["accuracy"] == 0.75
    assert (
        m["precision_neg"] == 1.0
        and m["recall_neg"] == pytest.approx(2 / 3)
        and m["f1_neg"] == pytest.approx(0.8)
    )
    assert m["precision_pos"] == 0.5 and m["recall_pos"] == 1.0 and m["f1_pos"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    # a class never predicted: zeros, not a warning-and-NaN
    assert metrics.single_label_metrics([0, 0], [0, 1], ["a", "b"])["precision_b"] == 0.0


def test_multi_label_and_regression_metrics_exact():
    m = metrics.multi_label_metrics([[1, 0], [1, 1], [0, 0]], [[1, 0], [0, 1], [0, 1]], ["x", "y"])
    # x: tp 1, fp 1 -> f1 2/3; y: tp 1, fn 1 -> f1 2/3; micro: tp 2, fp 1, fn 1 -> 2/3
    assert m["micro_f1"] == pytest.approx(2 / 3) and m["macro_f1"] == pytest.approx(2 / 3)
    assert m["subset_accuracy"] == pytest.approx(1 / 3)
    assert m["f1_x"] == pytest.approx(2 / 3)
    r = metrics.regression_metrics([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    assert r["mse"] == pytest.approx(1 / 3) and r["mae"] == pytest.approx(1 / 3)
    assert r["pearson"] == pytest.approx(np.corrcoef([1, 2, 3], [1, 2, 4])[0, 1]) and r["spearman"] == 1.0
    assert math.isnan(metrics.regression_metrics([1.0, 1.0], [0.0, 2.0])["pearson"])


def test_decode_logits_confusion_and_defaults():
    ids, scores = metrics.decode_logits(np.array([[2.0, 0.0], [0.0, 1.0]]), "single_label_classification")
    assert ids.tolist() == [0, 1]
    assert scores.tolist() == pytest.approx([1 / (1 + math.exp(-2)), 1 / (1 + math.exp(-1))])
    preds, probs = metrics.decode_logits((np.array([[0.0, 3.0, -1.0]]),), "multi_label_classification")
    assert preds.tolist() == [[1, 1, 0]] and probs[0, 1] == pytest.approx(1 / (1 + math.exp(-3)))
    values, _ = metrics.decode_logits(np.array([[0.5], [1.5]]), "regression")
    assert values.tolist() == [0.5, 1.5]
    assert metrics.confusion([0, 1, 1], [0, 0, 1], 3) == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert metrics.default_metric("regression") == ("mse", False)
    assert metrics.default_metric("single_label_classification") == ("accuracy", True)


# --- output directory ----------------------------------------------------------------------------------


def test_finished_output_dir_refused_and_kept(tmp_path):
    from ftlib.outputs.integrity import MANIFEST, write_manifest

    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "config.json").write_text("{}")
    # model files without a manifest: a final save that did not finish, and nothing to resume from
    with pytest.raises(ValueError, match=r"holds an unfinished output .*--overwrite_output_dir"):
        prepare_output_dir(tmp_path)
    write_manifest(tmp_path)  # now finished
    with pytest.raises(
        ValueError, match=r"already holds a finished model \(.*model.safetensors.*\).*--overwrite_output_dir"
    ):
        prepare_output_dir(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == b"weights"  # nothing deleted
    assert prepare_output_dir(tmp_path, overwrite=True) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([MANIFEST, "config.json", "model.safetensors"])


def test_output_dir_errors_and_auto_resume(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"--output_dir .*file exists and is a file"):
        prepare_output_dir(tmp_path / "file")
    run = tmp_path / "run"
    assert prepare_output_dir(run) is None and run.is_dir()  # created
    with pytest.raises(ValueError, match=r"no (complete )?checkpoint-\* folder"):
        prepare_output_dir(run, resume_from_checkpoint=True)
    for step in (9, 10, 2):
        (run / f"checkpoint-{step}").mkdir()
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    assert prepare_output_dir(run) == str(run / "checkpoint-10")  # numeric order, not text order
    assert prepare_output_dir(run, resume_from_checkpoint=True) == str(run / "checkpoint-10")
    assert prepare_output_dir(run, resume_from_checkpoint=str(run / "checkpoint-2")) == str(
        run / "checkpoint-2"
    )
    assert prepare_output_dir(run, overwrite=True) is None  # start over: no resume
    with pytest.raises(ValueError, match="is not a directory"):
        prepare_output_dir(run, resume_from_checkpoint=str(run / "checkpoint-7"))
    with pytest.raises(ValueError, match="MiB free"):
        prepare_output_dir(run, min_free_bytes=2**62)


# --- integrity manifest ---------------------------------------------------------------------------------


def make_result(root: Path) -> Path:
    (root / "checkpoint-5").mkdir(parents=True)
    (root / "checkpoint-5" / "optimizer.pt").write_bytes(b"moments")
    (root / "model.safetensors").write_bytes(b"weights")
    (root / "config.json").write_text('{"a": 1}')
    (root / "sub").mkdir()
    (root / "sub" / "notes.txt").write_text("hello")
    return root


def test_manifest_detects_changed_missing_and_extra_files(tmp_path):
    root = make_result(tmp_path / "result")
    manifest = json.loads(integrity.write_manifest(root).read_text())
    assert sorted(manifest["files"]) == [
        "config.json",
        "model.safetensors",
        "sub/notes.txt",
    ]  # no checkpoints
    assert (
        manifest["files"]["sub/notes.txt"]
        == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    )
    assert integrity.verify_manifest(root) == []
    (root / "checkpoint-5" / "optimizer.pt").write_bytes(b"changed")  # checkpoints are not part of the result
    assert integrity.verify_manifest(root) == []
    (root / "config.json").write_text('{"a": 2}')
    (root / "sub" / "notes.txt").unlink()
    (root / "extra.bin").write_bytes(b"?")
    assert integrity.verify_manifest(root) == [
        "missing: sub/notes.txt",
        "extra: extra.bin",
        "changed: config.json",
    ]
    assert integrity.verify_manifest(tmp_path) == [f"no {integrity.MANIFEST} in {tmp_path}"]


def test_verify_command_exit_codes(tmp_path, capsys):
    root = make_result(tmp_path / "result")
    integrity.write_manifest(root)
    assert integrity.main([str(root)]) == 0
    assert capsys.readouterr().out.strip().endswith(": OK")
    (root / "model.safetensors").write_bytes(b"tampered")
    assert integrity.main([str(root)]) == 1
    assert capsys.readouterr().out.splitlines() == ["changed: model.safetensors", f"{root}: FAILED"]
    # the console script that `pip install -e .` puts beside the interpreter running the tests
    script = Path(sys.executable).parent / "ftlib-verify"
    assert script.exists(), f"{script} missing: the package's console scripts are not installed"
    done = subprocess.run([script, str(root)], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout.splitlines() == [
        "changed: model.safetensors",
        f"{root}: FAILED",
    ]


# --- Hub ------------------------------------------------------------------------------------------------


def test_files_to_push_leave_training_state_out(tmp_path):
    for name in (
        "model.safetensors",
        "config.json",
        "README.md",
        "tokenizer.json",
        "all_results.json",
        "training_args.bin",
        "optimizer.pt",
        "scheduler.pt",
        "trainer_state.json",
        "pytorch_model.bin",
        "checkpoint-3/model.safetensors",
        "checkpoint-3/optimizer.pt",
        "runs/events.out",
        ".ftlib-write-test-x",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert [str(p) for p in hub.files_to_push(tmp_path)] == [
        "README.md",
        "all_results.json",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]


def test_quality_gate():
    hub.quality_gate(
        {"eval_accuracy": 0.9}, "accuracy", 0.9, greater_is_better=True
    )  # at the threshold: passes
    hub.quality_gate({"eval_accuracy": 0.1}, "accuracy", None, greater_is_better=True)  # no gate
    with pytest.raises(
        ValueError, match=r"eval_accuracy = 0.8500 is below the quality gate --push_min_metric=0.9"
    ):
        hub.quality_gate({"eval_accuracy": 0.85}, "eval_accuracy", 0.9, greater_is_better=True)
    hub.quality_gate({"eval_loss": 0.3}, "loss", 0.4, greater_is_better=False)
    with pytest.raises(ValueError, match=r"eval_loss = 0.5000 is above"):
        hub.quality_gate({"eval_loss": 0.5}, "loss", 0.4, greater_is_better=False)
    with pytest.raises(ValueError, match="is below"):
        hub.quality_gate({"eval_accuracy": float("nan")}, "accuracy", 0.0, greater_is_better=True)
    with pytest.raises(ValueError, match=r"no 'eval_f1' among the evaluation results \(eval_accuracy\)"):
        hub.quality_gate({"eval_accuracy": 1.0}, "f1", 0.5, greater_is_better=True)


@pytest.mark.parametrize("revision", ["dev", None])
def test_push_output_calls_the_hub_api(revision, tmp_path, fake_hub):
    for name in ("model.safetensors", "config.json", "training_args.bin", "checkpoint-1/model.safetensors"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x")
    settings = hub.HubSettings(
        push=True, repo_id="me/tiny", private=True, revision=revision, token="hf_SECRET"
    )
    url = hub.push_output(tmp_path, settings, commit_message="msg")
    assert url == "https://hf.co/me/tiny/commit/abc"
    names = [c[0] for c in fake_hub]
    assert names == ["init", "create_repo", *(["create_branch"] if revision else []), "upload_folder"]
    calls = dict(fake_hub)
    assert calls["init"] == {"token": "hf_SECRET"}
    assert calls["create_repo"] == {
        "repo_id": "me/tiny",
        "private": True,
        "exist_ok": True,
        "repo_type": "model",
    }
    if revision:
        assert calls["create_branch"] == {"repo_id": "me/tiny", "branch": "dev", "exist_ok": True}
    upload = calls["upload_folder"]
    assert upload["repo_id"] == "me/tiny" and upload["revision"] == revision
    assert upload["folder_path"] == str(tmp_path) and upload["commit_message"] == "msg"
    assert sorted(upload["allow_patterns"]) == ["config.json", "model.safetensors"]


def test_take_hub_settings_removes_the_token(tmp_path):
    args = TrainingArguments(
        output_dir=str(tmp_path / "my-model"),
        report_to="none",
        use_cpu=True,
        push_to_hub=True,
        hub_token="hf_SECRET",
        hub_private_repo=True,
        hub_revision="dev",
    )
    settings = hub.take_hub_settings(args)
    assert (settings.push, settings.repo_id, settings.private, settings.revision) == (
        True,
        "my-model",
        True,
        "dev",
    )
    assert settings.token == "hf_SECRET"
    assert "hf_SECRET" not in repr(settings) and "hf_SECRET" not in str(settings)
    assert args.push_to_hub is False and args.hub_token is None
    assert b"hf_SECRET" not in pickle.dumps(args)  # what Trainer saves as training_args.bin
    args = TrainingArguments(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, hub_model_id="org/name"
    )
    settings = hub.take_hub_settings(args)
    assert (settings.push, settings.repo_id, settings.token) == (False, "org/name", None)


def test_soft_targets_with_class_weights_are_a_weighted_mean(make_core_trainer, core_data):
    """Soft (mixup) targets with class weights: sum_i sum_c w_c y_ic (-log p_ic) over sum_i sum_c w_c y_ic, the
    normaliser of hard targets (torch's own soft cross-entropy divides by the row count instead); a one-hot soft
    target gives exactly the hard-target loss."""
    rows = core_data(4, seed=1)
    weights = torch.tensor([0.5, 2.0])
    trainer = make_core_trainer(class_weights=weights)
    trainer.model.eval()
    soft = torch.tensor([[0.7, 0.3], [0.2, 0.8], [1.0, 0.0], [0.5, 0.5]])
    inputs = {"input_ids": torch.stack([r["input_ids"] for r in rows]), "labels": soft}
    hard = torch.tensor([1, 1, 0, 1])
    with torch.no_grad():
        logits = trainer.model(input_ids=inputs["input_ids"]).logits
        weighted = soft * weights
        expected = float(-(weighted * logits.log_softmax(-1)).sum() / weighted.sum())
        loss = trainer.compute_loss(trainer.model, dict(inputs))
        one_hot = trainer.compute_loss(trainer.model, {**inputs, "labels": F.one_hot(hard, 2).float()})
        hard_loss = trainer.compute_loss(trainer.model, {**inputs, "labels": hard})
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    assert abs(expected - float(F.cross_entropy(logits, soft, weight=weights))) > 1e-3  # not torch's row mean
    assert float(hard_loss) == pytest.approx(float(F.cross_entropy(logits, hard, weight=weights)), abs=1e-6)
    assert float(one_hot) == pytest.approx(float(hard_loss), abs=1e-6)


def test_resume_from_last_step_mid_epoch_trains_nothing(make_core_trainer, tmp_path):
    # 16 rows, batch 4: step 6 is mid-epoch; Trainer alone would take a step 7 (issue 11 item 5)
    from ftlib.strategy.arguments import FineTuneArguments

    full = make_core_trainer(FineTuneArguments(), max_steps=6, save_strategy="steps", save_steps=6)
    full.train()
    resumed = make_core_trainer(FineTuneArguments(), max_steps=6, save_strategy="steps", save_steps=6, output_dir=str(tmp_path / "r"))
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-6"))
    assert resumed.state.global_step == 6
    final = dict(resumed.model.named_parameters())
    assert all(torch.equal(p, final[n]) for n, p in full.model.named_parameters())


def test_seeded_rows_draw_per_row_and_epoch_whatever_the_reading_order():
    """Each row's random transform draws from (seed, epoch, index): the same in any order of reading (another worker,
    a resume that skipped rows), anew each epoch, and the global torch RNG is left as it was."""
    from datasets import Dataset

    from ftlib.training.trainer import SeededRows, has_lazy_transform

    rows = Dataset.from_dict({"x": list(range(6))}).with_transform(
        lambda batch: {"x": batch["x"], "noise": [torch.rand(()).item() for _ in batch["x"]]})
    assert has_lazy_transform(rows) and not has_lazy_transform(Dataset.from_dict({"x": [1]}))
    seeded = SeededRows(rows, seed=0)
    state = torch.get_rng_state()
    forward = [seeded[i]["noise"] for i in range(6)]
    assert [seeded[i]["noise"] for i in reversed(range(6))] == forward[::-1] and len(set(forward)) == 6
    assert torch.equal(torch.get_rng_state(), state)
    seeded.epoch = 1
    assert all(seeded[i]["noise"] != forward[i] for i in range(6))
    assert [SeededRows(rows, seed=1)[i]["noise"] for i in range(6)] != forward
