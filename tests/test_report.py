"""The training report (ftlib.outputs.report): each figure's data against log_history / predictions, the PNGs, the model
card, ftlib-report, and the per-group learning rates in log_history and TensorBoard (ftlib.training.tracking)."""

import json
import math

import numpy as np
import pytest
from test_text_cls import base_argv, run, sentiment_rows, write_csv

from ftlib.outputs import report
from ftlib.tasks.metrics import per_class_metric
from ftlib.training.tracking import group_key

LOGS = [
    {"loss": 1.0, "grad_norm": 3.0, "learning_rate": 1e-3, "lr/head": 1e-3, "lr/block_2": 5e-4, "unfreeze/stage": 1,
     "epoch": 0.5, "step": 2},
    {"loss": 0.5, "grad_norm": 2.0, "learning_rate": 2e-3, "lr/head": 2e-3, "lr/block_2": 1e-3, "unfreeze/stage": 2,
     "epoch": 1.0, "step": 4},
    {"eval_loss": 0.7, "eval_accuracy": 0.6, "epoch": 1.0, "step": 4},
    {"loss": 0.25, "grad_norm": 1.0, "learning_rate": 1e-3, "lr/head": 1e-3, "lr/block_2": 5e-4, "unfreeze/stage": 3,
     "epoch": 1.5, "step": 6},
    {"eval_loss": 0.4, "eval_accuracy": 0.9, "epoch": 2.0, "step": 8},
    {"train_runtime": 1.0, "train_loss": 0.6, "epoch": 2.0, "step": 8},
]


def assert_png(path):
    from PIL import Image

    assert path.is_file(), path
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.size > 10_000 and pixels.std() > 5, path  # decodes, and is not one flat colour


def test_curves_equal_log_history():
    curves = report.loss_curves(LOGS, half_life=2)
    assert curves["steps"] == [2, 4, 6] and curves["loss"] == [1.0, 0.5, 0.25]
    # debiased EMA, a half-life of 2 steps at points 2 steps apart (0.5 a point): avg 0.5, 0.5, 0.375 over 1 - 0.5**k
    assert curves["smoothed"] == pytest.approx([1.0, (0.5 * 0.5 + 0.5 * 0.5) / 0.75, 0.375 / 0.875])
    assert curves["eval_steps"] == [4, 8] and curves["eval_loss"] == [0.7, 0.4]
    assert report.metric_curve(LOGS, "accuracy") == {"name": "eval_accuracy", "steps": [4, 8], "values": [0.6, 0.9]}
    assert report.grad_norm_curve(LOGS) == {"steps": [2, 4, 6], "values": [3.0, 2.0, 1.0]}
    rates = report.lr_curves(LOGS)
    assert list(rates) == ["head", "block_2"]
    assert rates["block_2"] == {"steps": [2, 4, 6], "values": [5e-4, 1e-3, 5e-4]}
    # without per-group entries: Trainer's single learning_rate
    plain = [{k: v for k, v in row.items() if not k.startswith("lr/")} for row in LOGS]
    assert report.lr_curves(plain) == {"learning_rate": {"steps": [2, 4, 6], "values": [1e-3, 2e-3, 1e-3]}}


def test_smoothed_loss_is_debiased_and_its_window_counted_in_steps():
    steps = list(range(10, 210, 10))
    # a constant is itself from the first point (no pull towards 0, nor towards anything else)
    assert report.smooth(steps, [0.7] * 20) == pytest.approx([0.7] * 20)
    # the demo's shape: a loss falling from 1.5 to 0.01 in 100 steps, logged every 10; the curve stays inside the
    # raw range, and at step 100 sits near the raw 0.01 (the old smoothing, 0.9 a logged point: 0.243)
    falling = [1.5 * (0.01 / 1.5) ** min(1.0, (s - 10) / 90) for s in steps]
    smoothed = report.smooth(steps, falling)
    assert all(min(falling) <= y <= max(falling) for y in smoothed) and smoothed[0] == pytest.approx(1.5)
    assert all(y >= x for x, y in zip(falling, smoothed))  # a weighted mean of the values so far: above a falling one
    assert smoothed[9] == pytest.approx(0.0292, abs=1e-4) and smoothed[-1] == pytest.approx(0.01, abs=1e-4)
    # the window is in steps, not points: logged every step or every 10, the curves agree where both have a point
    every_step = report.smooth(range(1, 201), [1.5 * (0.01 / 1.5) ** min(1.0, (s - 1) / 99) for s in range(1, 201)])
    assert every_step[99] == pytest.approx(0.0306, abs=1e-4) and every_step[-1] == pytest.approx(0.01, abs=1e-4)
    assert every_step[99] == pytest.approx(smoothed[9], rel=0.1)
    # points 10 steps apart with a half-life of 10 steps: each new point weighs as much as all the earlier ones
    assert report.smooth([10, 20], [1.0, 0.0]) == pytest.approx([1.0, 0.5 * 0.5 / 0.75])


def test_unfreeze_marks_from_logs_and_from_the_schedule():
    assert report.unfreeze_marks(LOGS) == [{"step": 4, "stage": 2}, {"step": 6, "stage": 3}]
    # exact steps from the schedule: every 3 steps -> stages 2 and 3 at 3 and 6 (the 4th would be past the end)
    schedule = {"every": 3, "unit": "step", "stages": 4}
    assert report.unfreeze_marks(LOGS, schedule) == [{"step": 3, "stage": 2}, {"step": 6, "stage": 3}]
    # per epoch: 4 steps per epoch (step 8 at epoch 2)
    assert report.unfreeze_marks(LOGS, {"every": 1, "unit": "epoch", "stages": 3}) == [{"step": 4, "stage": 2}]
    state = {"stateful_callbacks": {"GradualUnfreezeCallback": {"args": {"stages": [["a"], ["b"]], "every": 5,
                                                                          "unit": "step"}, "attributes": {}}}}
    assert report.unfreeze_schedule(state) == {"every": 5, "unit": "step", "stages": 2}
    assert report.unfreeze_schedule({"stateful_callbacks": {}}) is None


def test_group_keys_are_tracker_safe():
    assert group_key({"name": "head (no decay)"}, 0) == "lr/head_no_decay"
    assert group_key({"name": "block 3"}, 1) == "lr/block_3"
    assert group_key({}, 2) == "lr/group_2"


def test_prediction_data_equals_the_predictions():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1])
    preds = {"kind": "text", "problem_type": "single_label_classification", "probs": probs, "labels": labels,
             "label_names": np.array(["neg", "pos"]), "examples": np.array(["a", "b|c", "d", "e"])}
    outcome = report.example_outcomes(preds)
    assert outcome["pred"].tolist() == [0, 1, 0, 1]
    assert outcome["loss"] == pytest.approx(-np.log([0.9, 0.2, 0.4, 0.7]), rel=1e-6)
    assert report.top_losses(outcome["loss"], 2) == [1, 2]
    assert report.confusion_data(outcome["pred"], labels, ["neg", "pos"])["matrix"] == [[1, 1], [1, 1]]
    # preds [0, 1, 0, 1] against [0, 0, 1, 1]: each class half right; a 3-class check with an unseen class below
    assert report.class_scores(outcome["pred"], labels, ["neg", "pos"])["pos"] == {
        "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2.0}
    three = report.class_scores([0, 0, 1, 0], [0, 1, 1, 0], ["a", "b", "c"])
    assert three["a"]["precision"] == pytest.approx(2 / 3) and three["b"] == {
        "precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2.0}
    assert three["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0.0}
    cal = report.calibration_data(outcome["confidence"], outcome["outcome"], bins=2)
    # bin (0.5, 1]: all four, confidence mean 0.75, accuracy 0.5 -> ECE 0.25
    assert cal["count"] == [0, 4] and cal["confidence"][1] == pytest.approx(0.75) and cal["ece"] == pytest.approx(0.25)
    table = report.top_losses_table(preds, k=2).splitlines()
    assert table[2].startswith("| 1 | b\\|c | neg | pos | 0.800 | 1.609 |") and len(table) == 4


def test_token_word_values_and_entity_scores():
    windows = {"example_index": [0, 1], "word_ids": [[-1, 0, 1, 1, -1], [-1, 0, -1]],
               "labels": [[-100, 1, 0, -100, -100], [-100, 2, -100]], "num_words": [2, 1]}
    values = np.array([[9, 0.5, 0.25, 0.1, 9], [9, 0.75, 9, -100, -100]])
    assert report.word_values(values, windows, 2) == [[0.5, 0.25], [0.75]]
    gold, pred = [["B-PER", "O"], ["B-LOC"]], [["B-PER", "O"], ["O"]]
    scores = report.entity_scores(gold, pred, "BIO")
    assert scores["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1.0}
    assert scores["LOC"]["recall"] == 0.0 and scores["LOC"]["support"] == 1.0


def test_per_class_metrics_leave_the_card_table():
    per_class = ["eval_f1_pos", "eval_precision_neg", "test_PER_recall", "eval_LOC_support"]
    headline = ["eval_accuracy", "eval_macro_f1", "eval_f1", "eval_micro_f1", "eval_loss", "test_precision"]
    assert all(per_class_metric(k) for k in per_class)
    assert not any(per_class_metric(k) for k in headline)


def test_a_run_without_evaluation_still_gets_its_training_curves(tmp_path):
    train_only = [row for row in LOGS if "loss" in row]
    written = report.write_report(tmp_path, train_only, metric="accuracy")
    assert sorted(p.name for p in written) == ["grad_norm.png", "learning_rates.png", "losses.png"]
    for path in written:
        assert_png(path)


def test_image_top_losses_grid(tmp_path):
    from PIL import Image

    paths = []
    for i, color in enumerate(["red", "green", "blue"]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (20, 20), color).save(paths[-1])
    preds = {"kind": "image", "problem_type": "single_label_classification", "labels": np.array([0, 1, 2]),
             "probs": np.array([[0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.5, 0.25, 0.25]], dtype=np.float32),
             "label_names": np.array(["a", "b", "c"]), "examples": np.array(paths)}
    names = sorted(p.name for p in report.write_report(tmp_path / "out", [], predictions=preds))
    assert names == ["calibration.png", "class_scores.png", "confusion_matrix.png", "losses.png", "top_losses.png"]
    for name in names:
        assert_png(tmp_path / "out" / "report" / name)


def test_ftlib_report_names_the_missing_state_file(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 1
    assert str(tmp_path / "trainer_state.json") in capsys.readouterr().err


def test_text_run_writes_report_card_and_tensorboard_scalars(tiny_bert_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train = write_csv(tmp_path / "train.csv", sentiment_rows(2))
    out = tmp_path / "out"
    run(base_argv(tiny_bert_dir, train, out, "--max_steps", "6", "--logging_steps", "1", "--eval_strategy", "steps",
                  "--eval_steps", "3", "--save_strategy", "steps", "--save_steps", "3", "--gradual_unfreeze", "2", "--gradual_unfreeze_unit", "step",
                  "--report_to", "tensorboard", "--layer_decay", "0.5"))
    state = json.loads((out / "trainer_state.json").read_text())
    logs = [row for row in state["log_history"] if "loss" in row]
    assert len(logs) == 6
    for row in logs:  # Trainer's learning_rate is its first group's; each block learns at half the rate above it
        assert row["lr/embeddings_no_decay"] == row["learning_rate"]
        assert row["lr/block_0"] == pytest.approx(0.5 * row["lr/block_1"]) and row["lr/block_1"] == row["lr/head"]
        assert row["lr/embeddings"] == pytest.approx(0.5 * row["lr/block_0"])
    assert logs[1]["lr/head"] == pytest.approx(2e-3)  # after one warm-up step, the head's --head_learning_rate
    assert [row["unfreeze/stage"] for row in logs] == [1, 1, 2, 2, 3, 3]

    files = {p.name for p in (out / "report").iterdir()}
    expected = {"losses.png", "metric.png", "grad_norm.png", "learning_rates.png", "confusion_matrix.png",
                "class_scores.png", "calibration.png"}
    assert expected <= files and {"top_losses.md", "predictions.npz"} <= files
    for name in expected:
        assert_png(out / "report" / name)
    table = (out / "report" / "top_losses.md").read_text()
    assert table.count("\n| ") >= 4 and (" pos |" in table or " neg |" in table)
    saved = report.load_predictions(out / "report" / "predictions.npz")
    results = json.loads((out / "all_results.json").read_text())
    accuracy = float((saved["probs"].argmax(1) == saved["labels"]).mean())
    assert accuracy == pytest.approx(results["eval_accuracy"])  # the report's predictions are the final evaluation's
    per_class = report.class_scores(saved["probs"].argmax(1), saved["labels"], list(saved["label_names"]))
    for name, scores in per_class.items():  # the figure the card leaves out holds the run's own per-class metrics
        assert scores["f1"] == pytest.approx(results[f"eval_f1_{name}"])
        assert scores["recall"] == pytest.approx(results[f"eval_recall_{name}"])

    card = (out / "README.md").read_text()
    head, body = card.split("# ", 1)[0], card
    assert "model-index:" in head and "base_model" not in head  # a local checkpoint is not a Hub id
    assert "](report/learning_rates.png)" in body and "](report/top_losses.md)" in body
    assert "](report/class_scores.png)" in body
    assert "eval_f1_pos" not in body and "eval_accuracy" in body and "https://" not in body

    # TensorBoard received every group's rate and the stage as scalars
    [run_dir] = {p.parent for p in tmp_path.rglob("events.out.tfevents*")}
    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/lr/head", "train/lr/block_0", "train/lr/block_1", "train/unfreeze/stage"} <= tags, tags
    assert [e.value for e in events.Scalars("train/unfreeze/stage")] == [1, 1, 2, 2, 3, 3]
    assert [e.value for e in events.Scalars("train/lr/block_1")] == pytest.approx([r["lr/block_1"] for r in logs])

    # ftlib-report regenerates it from the finished output, and from a checkpoint (curves only)
    for path in expected:
        (out / "report" / path).unlink()
    assert report.main([str(out)]) == 0
    assert expected <= {p.name for p in (out / "report").iterdir()}
    checkpoint = out / "checkpoint-3"  # a run still training: its checkpoint has the curves so far, no predictions
    assert (checkpoint / "trainer_state.json").is_file() and not (checkpoint / "report").exists()
    assert report.main([str(checkpoint)]) == 0
    curves = {p.name for p in (checkpoint / "report").iterdir()}
    assert curves == {"losses.png", "metric.png", "grad_norm.png", "learning_rates.png"}, curves
    for name in curves:
        assert_png(checkpoint / "report" / name)
    assert not math.isnan(report.calibration_data(saved["probs"].max(1), saved["probs"].argmax(1) == saved["labels"])["ece"])


def test_token_run_report_has_entity_scores_and_word_level_top_losses(tiny_bert_dir, tmp_path):
    import random

    import test_token_cls as tok

    rng = random.Random(0)
    train = tok.write_conll(tmp_path / "train.conll", [tok.sentence(rng) for _ in range(16)])
    valid = tok.write_conll(tmp_path / "valid.conll", [tok.sentence(rng) for _ in range(6)])
    out = tmp_path / "out"
    metrics = tok.run(tok.base_argv(tiny_bert_dir, train, out, "--validation_file", valid, "--max_steps", "4",
                                    "--logging_steps", "1"))
    saved = report.load_predictions(out / "report" / "predictions.npz")
    gold, pred = report.sentence_tags(saved)
    rows = tok.read_predictions(out / "validation_predictions.conll")
    assert pred == [[r[2] for r in s] for s in rows] and gold == [[r[1] for r in s] for s in rows]
    scores = report.entity_scores(gold, pred, "BIO")
    assert scores["PER"]["f1"] == pytest.approx(metrics["eval_PER_f1"])
    assert ((saved["word_prob"] > 0) & (saved["word_prob"] <= 1)).all()
    for name in ("losses.png", "learning_rates.png", "entity_scores.png", "calibration.png"):
        assert_png(out / "report" / name)
    assert (out / "report" / "top_losses.md").read_text().count("\n| ") >= 6


def test_image_run_report_has_confusion_and_thumbnail_grid(tiny_vit_dir, tmp_path):
    import test_image_cls as img

    data = img.image_folder(tmp_path / "data", {"train": 4, "val": 2})
    out = tmp_path / "out"
    img.run(img.base_argv(tiny_vit_dir, out, "--image_folder", data, "--max_steps", "2", "--logging_steps", "1",
                          "--dataloader_num_workers", "0"))
    for name in ("losses.png", "confusion_matrix.png", "class_scores.png", "calibration.png", "top_losses.png"):
        assert_png(out / "report" / name)
    saved = report.load_predictions(out / "report" / "predictions.npz")
    matrix = json.loads((out / "confusion_matrix.json").read_text())["matrix"]
    outcome = report.example_outcomes(saved)
    assert report.confusion_data(outcome["pred"], saved["labels"], list(saved["label_names"]))["matrix"] == matrix
    assert "](report/top_losses.png)" in (out / "README.md").read_text()


def test_model_card_metadata_names_hub_ids_only(tmp_path):
    from huggingface_hub import ModelCard

    from ftlib.outputs import hub

    local = tmp_path / "my-checkpoint"
    local.mkdir()
    assert hub.hub_id("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub.hub_id("bert-base-uncased") == "bert-base-uncased"
    assert hub.hub_id(str(local)) is None and hub.hub_id("./data/train.csv") is None and hub.hub_id("a/b/c") is None
    metrics = {"eval_accuracy": 0.9, "eval_f1_pos": 0.8, "eval_loss": 0.3, "test_accuracy": 0.85}
    for base, expected in (("sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
                           (str(local), None)):
        out = tmp_path / f"out-{expected is None}"
        out.mkdir()
        path = hub.write_model_card(out, base_model=base, task="text-classification", dataset="stanfordnlp/sst2",
                                    metrics=metrics, strategy={"learning_rate": 1e-4},
                                    report=["report/losses.png", "report/class_scores.png"])
        card = ModelCard.load(path)
        assert card.data.base_model == expected and card.data.datasets == ["stanfordnlp/sst2"]
        [index] = card.data.to_dict()["model-index"]
        values = {m["name"]: m["value"] for r in index["results"] for m in r["metrics"]}
        assert values == {"eval_accuracy": 0.9, "test_accuracy": 0.85}  # headline only, no loss, no per-class
        assert "eval_f1_pos" not in card.text and "](report/class_scores.png)" in card.text
        assert ("https://" in card.text) is False
