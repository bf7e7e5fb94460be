"""ftlib-predict: a recipe's output directory applied to new data gives the recipe's own test predictions (text,
image, token; full, merged LoRA and adapter models), the multi-label thresholds tuned at the end of training, and
named errors for bad input."""

from __future__ import annotations

import csv
import json
import random
import shutil
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch
from test_image_cls import colour_image, image_folder
from test_text_cls import NEGATIVE, POSITIVE, sentiment_rows, write_csv
from test_token_cls import ONE_RATE, long_sentence, sentence, write_conll
from transformers import TrainingArguments

from ftlib.data.image import CorruptImageError
from ftlib.data.token import read_conll
from ftlib.outputs import predict as fpredict
from ftlib.outputs.integrity import verify_manifest
from ftlib.outputs.predict import PredictError, predict
from ftlib.run.cli import parse_args
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.tasks.image_classification import ImageDataArguments
from ftlib.tasks.registry import TASKS
from ftlib.tasks.text_classification import TextDataArguments
from ftlib.tasks.thresholds import best_threshold, thresholds_wanted, tune_thresholds
from ftlib.tasks.token_classification import TokenDataArguments
from ftlib.training.arguments import ModelArguments

QUIET = ["--save_strategy", "no", "--disable_tqdm", "true", "--use_cpu", "true", "--dataloader_pin_memory", "false",
         "--seed", "0", "--report_to", "none"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def recipe(name: str, argv: list[str]) -> dict:
    import image_cls
    import text_cls
    import token_cls

    module, data = {"text": (text_cls, TextDataArguments), "image": (image_cls, ImageDataArguments),
                    "token": (token_cls, TokenDataArguments)}[name]
    defaults = {**module.RECIPE_DEFAULTS, "min_train_steps": 0}  # few steps: the tests' runs stay short
    return module.main(*parse_args((ModelArguments, data, FineTuneArguments, TrainingArguments), argv + QUIET,
                                   defaults=defaults))


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def chosen(row: dict) -> list[str]:
    """A multi-label row's labels."""
    return row["label"].split(";") if row["label"] else []


def probs_of(row: dict) -> dict[str, float]:
    return {key.removeprefix("prob_"): float(value) for key, value in row.items() if key.startswith("prob_")}


def assert_same_as_recipe(predicted: list[dict], recipe_rows: list[dict]) -> None:
    """Row for row: the same ids in the same order, the same labels, the same scores (the recipe writes 4 decimals)."""
    assert [p["id"] for p in predicted] == [r["id"] for r in recipe_rows]
    assert [p["label"] for p in predicted] == [r["prediction"] for r in recipe_rows]
    for p, r in zip(predicted, recipe_rows):
        ours = [float(s) for s in p["score"].split(";") if s]
        theirs = [float(s) for s in r["score"].split(";") if s]
        assert ours == pytest.approx(theirs, abs=1.5e-4)


# -- text ---------------------------------------------------------------------------------------------------------

TEST_TEXTS = POSITIVE[:4] + NEGATIVE[:4] + ["a film", "the whole cast"]


def review_rows(repeat: int) -> list[dict]:
    return [{"id": r["id"], "review": r["text"], "label": r["label"]} for r in sentiment_rows(repeat)]


@pytest.fixture(scope="module")
def text_run(tiny_bert_dir, tmp_path_factory) -> Path:
    """A text classifier on a column named ``review`` with ids, trained to learn the keywords; its test split
    predicted by the recipe."""
    root = tmp_path_factory.mktemp("predict-text")
    train = write_csv(root / "train.csv", review_rows(4))
    val = write_csv(root / "val.csv", review_rows(1))
    write_csv(root / "test.csv", [{"id": f"t{i}", "review": t} for i, t in enumerate(TEST_TEXTS)])
    out = root / "out"
    recipe("text", ["--model_name_or_path", str(tiny_bert_dir), "--train_file", str(train), "--validation_file",
                    str(val), "--test_file", str(root / "test.csv"), "--output_dir", str(out), "--text_column",
                    "review", "--id_column", "id", "--per_device_train_batch_size", "8",
                    "--per_device_eval_batch_size", "4", "--learning_rate", "2e-3", "--head_learning_rate", "2e-3",
                    "--num_train_epochs", "8", "--freeze_embeddings", "false"])
    return out


def test_text_predictions_equal_the_recipes_and_the_pipelines(text_run, tmp_path):
    test_file = text_run.parent / "test.csv"
    # the column (review), the ids and the batch size come from the run's config.yaml
    assert fpredict.main(["--model", str(text_run), "--input", str(test_file), "--output", str(tmp_path / "p.csv"),
                          "--disable_tqdm"]) == 0
    rows = read_csv(tmp_path / "p.csv")
    assert list(rows[0]) == ["id", "label", "score", "prob_neg", "prob_pos"]
    recipe_rows = read_csv(text_run / "test_predictions.csv")
    assert_same_as_recipe(rows, recipe_rows)
    assert [r["label"] for r in rows[:8]] == ["pos"] * 4 + ["neg"] * 4  # a model that learnt: the test can fail
    for row in rows:
        probs = probs_of(row)
        assert sum(probs.values()) == pytest.approx(1, abs=1e-5)
        assert float(row["score"]) == pytest.approx(max(probs.values()), abs=1e-6)
        assert row["label"] == max(probs, key=probs.get)

    # JSON lines: the same predictions
    predict(text_run, test_file, tmp_path / "p.jsonl", progress=False)
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == [r["id"] for r in rows]
    assert [line["label"] for line in lines] == [r["label"] for r in rows]
    assert [line["probs"]["pos"] for line in lines] == pytest.approx([float(r["prob_pos"]) for r in rows], abs=1e-6)

    # transformers' own pipeline on the output directory agrees
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(text_run), device="cpu")
    answers = classify(TEST_TEXTS)
    assert [a["label"] for a in answers] == [r["label"] for r in rows]
    assert [a["score"] for a in answers] == pytest.approx([float(r["score"]) for r in rows], abs=1e-5)


def test_every_row_kept_in_order_empty_text_predicted_and_columns_overridden(text_run, tmp_path):
    texts = ["", "I loved every minute of it", None, "a dull and lifeless mess", "   "]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    # no id column in this file: the run's --id_column is unset with an empty value, the text column renamed
    predict(text_run, tmp_path / "in.jsonl", tmp_path / "p.csv", text_column="body", id_column="", progress=False)
    rows = read_csv(tmp_path / "p.csv")
    assert [r["id"] for r in rows] == ["0", "1", "2", "3", "4"]  # row numbers: nothing dropped, nothing moved
    assert rows[1]["label"] == "pos" and rows[3]["label"] == "neg"
    # the empty texts are predicted (all as the same empty input), never dropped
    assert rows[0]["prob_pos"] == rows[2]["prob_pos"] == rows[4]["prob_pos"]


def test_new_data_without_the_runs_id_column_is_numbered_by_row(tmp_path, caplog):
    """New data rarely carries the training set's ids: the run's --id_column (from its config.yaml) falls back to
    row numbers, or for images to their paths, said once; an --id_column given as a flag must exist."""
    texts = write_csv(tmp_path / "new.csv", [{"text": t} for t in ("good", "bad", "fine")])
    settings = {"text_column": "text", "text_pair_column": None, "id_column": "id"}
    with caplog.at_level("WARNING", logger="ftlib.outputs.predict"):
        data, ids = TASKS["text"].read_input(texts, settings, {})
    assert ids == [0, 1, 2] and data["text"] == ["good", "bad", "fine"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [(f"{texts} has no column 'id' (the run's --id_column): the predictions are identified by "
                         "their row numbers (0, 1, ...) instead; --id_column names another column")]
    with pytest.raises(ValueError, match=rf"{texts}: no column 'id'; the columns are text"):
        TASKS["text"].read_input(texts, settings, {"given": {"id_column"}})
    # a file that has the column keeps its ids, without a word
    caplog.clear()
    with_ids = write_csv(tmp_path / "ids.csv", [{"id": "a7", "text": "good"}])
    assert TASKS["text"].read_input(with_ids, settings, {})[1] == ["a7"]
    assert not caplog.records

    colour_image("red", 0).save(tmp_path / "red.png")
    colour_image("blue", 1).save(tmp_path / "blue.png")
    images = write_csv(tmp_path / "images.csv", [{"path": "red.png"}, {"path": "blue.png"}])
    image_settings = {"image_column": "path", "id_column": "id", "check_images": True}
    _, ids = TASKS["image"].read_input(images, image_settings, {})
    assert [Path(i).name for i in ids] == ["red.png", "blue.png"]
    assert "the predictions are identified by their image paths" in caplog.text
    with pytest.raises(ValueError, match=rf"{images}: no column 'id'"):
        TASKS["image"].read_input(images, image_settings, {"given": {"id_column"}})


@pytest.mark.slow
def test_predict_command_on_text_alone_numbers_the_rows(text_run, tmp_path, caplog):
    """The demo's case: the run trained with --id_column id, new.csv holds only the text column."""
    new = write_csv(tmp_path / "new.csv", [{"review": t} for t in TEST_TEXTS[:3]])
    assert fpredict.main(["--model", str(text_run), "--input", str(new), "--output", str(tmp_path / "p.csv"),
                          "--disable_tqdm"]) == 0
    assert [r["id"] for r in read_csv(tmp_path / "p.csv")] == ["0", "1", "2"]
    assert caplog.text.count("has no column 'id'") == 1
    assert fpredict.main(["--model", str(text_run), "--input", str(new), "--output", str(tmp_path / "q.csv"),
                          "--id_column", "id", "--disable_tqdm"]) == 1  # asked for by name: it must be there
    assert not (tmp_path / "q.csv").exists()


def test_bad_columns_and_flags_are_named_before_the_model_loads(text_run, tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded before the input was checked")

    monkeypatch.setattr(fpredict, "load_model", no_model)
    bad = write_csv(tmp_path / "bad.csv", [{"id": "a", "text": "hello"}])
    with pytest.raises(ValueError, match=rf"{bad}: no column 'review'; the columns are id, text"):
        predict(text_run, bad, tmp_path / "p.csv", progress=False)
    with pytest.raises(ValueError, match=rf"{bad}: no column 'body'"):
        predict(text_run, bad, tmp_path / "p.csv", text_column="body", progress=False)
    every_empty = write_csv(tmp_path / "empty.csv", [{"id": "a", "review": ""}, {"id": "b", "review": ""}])
    with pytest.raises(PredictError, match="every row has an empty text"):
        predict(text_run, every_empty, tmp_path / "p.csv", progress=False)
    with pytest.raises(PredictError, match="--image_column: not used for text classification"):
        predict(text_run, bad, tmp_path / "p.csv", image_column="path", progress=False)
    with pytest.raises(PredictError, match="--output .*p.conll: write text classification predictions as .csv or .jsonl"):
        predict(text_run, bad, tmp_path / "p.conll", progress=False)
    with pytest.raises(PredictError, match="is inside --model"):
        predict(text_run, bad, text_run / "p.csv", progress=False)
    with pytest.raises(PredictError, match="--threshold applies to multi-label models"):
        predict(text_run, bad, tmp_path / "p.csv", threshold=0.3, progress=False)
    with pytest.raises(PredictError, match="--base_model: .* holds a whole model, not a LoRA adapter"):
        predict(text_run, bad, tmp_path / "p.csv", base_model=str(text_run), progress=False)
    with pytest.raises(PredictError, match=r"--input .*nowhere.csv: no such file"):
        predict(text_run, tmp_path / "nowhere.csv", tmp_path / "p.csv", progress=False)
    assert not (tmp_path / "p.csv").exists()


def test_folders_that_are_not_models(tmp_path, core_bert_dir, capsys):
    with pytest.raises(PredictError, match="no such folder"):
        predict(tmp_path / "missing", tmp_path / "in.csv", tmp_path / "p.csv")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PredictError, match=f"--model {empty} is not a model folder: no config.json or adapter_config"):
        predict(empty, tmp_path / "in.csv", tmp_path / "p.csv")
    (empty / "checkpoint-4").mkdir()
    with pytest.raises(PredictError, match="it holds checkpoint-4 .a run that has not finished"):
        predict(empty, tmp_path / "in.csv", tmp_path / "p.csv")
    # a transformers model but not an ftlib output: no config.yaml, so no settings; --task makes it usable
    with pytest.raises(PredictError, match="is not an ftlib output: no config.yaml .* pass --task"):
        predict(core_bert_dir, tmp_path / "in.csv", tmp_path / "p.csv")
    with pytest.raises(PredictError, match=r"holds a text classification model \(BertForSequenceClassification\), not a token classification one"):
        predict(core_bert_dir, tmp_path / "in.csv", tmp_path / "p.csv", task="token")
    backbone = tmp_path / "backbone"
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=37)).save_pretrained(backbone)
    with pytest.raises(PredictError, match=r"has no head ftlib-predict knows \(BertModel; it predicts text classification"):
        predict(backbone, tmp_path / "in.csv", tmp_path / "p.csv", task="text")
    # the command: one line on stderr, exit code 1
    capsys.readouterr()
    assert fpredict.main(["--model", str(empty), "--input", "x.csv", "--output", str(tmp_path / "p.csv")]) == 1
    assert capsys.readouterr().err.startswith(f"ftlib-predict: --model {empty} is not a model folder")


def test_console_script_is_registered():
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("ftlib-predict") == "ftlib.outputs.predict:main"


# -- LoRA: adapter and merged, pairs of texts ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_runs(text_run, tmp_path_factory) -> dict[str, Path]:
    """Adapter and merged LoRA outputs on sentence pairs, trained from a copy of the base (a test may move it). The
    base is the text run's classifier: LoRA on a random tiny BERT learns nothing in a few steps, and a LoRA that
    learns is what the tests need to tell a loaded adapter from a missing one."""
    root = tmp_path_factory.mktemp("predict-lora")
    base = root / "base"
    shutil.copytree(text_run, base)
    rows = [{"first": r["text"], "second": r["text"].split()[-1], "label": r["label"]} for r in sentiment_rows(4)]
    train = write_csv(root / "train.csv", rows)
    test = write_csv(root / "test.csv", [{"first": t, "second": t.split()[0]} for t in TEST_TEXTS])
    outputs = {}
    for save in ("adapter", "merged"):
        outputs[save] = root / save
        recipe("text", ["--model_name_or_path", str(base), "--train_file", str(train), "--test_file", str(test),
                        "--output_dir", str(outputs[save]), "--text_column", "first", "--text_pair_column", "second",
                        "--lora", "true", "--lora_r", "4", "--lora_save", save, "--learning_rate", "5e-3",
                        "--head_learning_rate", "5e-3", "--num_train_epochs", "6", "--freeze_embeddings", "false",
                        "--per_device_train_batch_size", "8"])
    outputs["base"] = base
    return outputs


@pytest.mark.parametrize("save", ["adapter", "merged"])
def test_lora_adapter_and_merged_predict_as_the_recipe(lora_runs, save, tmp_path):
    out = lora_runs[save]
    assert (out / "adapter_model.safetensors").is_file() == (save == "adapter")
    assert (out / "task_config.json").is_file() == (save == "adapter")  # the labels beside an adapter
    predict(out, out.parent / "test.csv", tmp_path / "p.csv", progress=False)
    rows = read_csv(tmp_path / "p.csv")
    assert_same_as_recipe(rows, read_csv(out / "test_predictions.csv"))
    assert {r["label"] for r in rows} == {"neg", "pos"}
    # the adapter and its head changed the base's predictions: a test that would fail without them
    predict(lora_runs["base"], out.parent / "test.csv", tmp_path / "base.csv", text_column="first",
            text_pair_column="second", id_column="", progress=False)
    shift = [abs(float(a["prob_pos"]) - float(b["prob_pos"])) for a, b in zip(rows, read_csv(tmp_path / "base.csv"))]
    assert max(shift) > 0.01, shift


def test_an_adapter_whose_base_is_missing_names_it_and_the_flag(lora_runs, tmp_path):
    out, base = lora_runs["adapter"], lora_runs["base"]
    moved = tmp_path / "moved-base"
    shutil.move(base, moved)
    try:
        with pytest.raises(PredictError, match=rf"LoRA adapter whose base model '{base}' is not available here .*"
                                               r"pass --base_model PATH"):
            predict(out, out.parent / "test.csv", tmp_path / "p.csv", progress=False)
        with pytest.raises(PredictError, match=rf"--base_model {tmp_path / 'nowhere'} is not available"):
            predict(out, out.parent / "test.csv", tmp_path / "p.csv", base_model=str(tmp_path / "nowhere"))
        predict(out, out.parent / "test.csv", tmp_path / "p.csv", base_model=str(moved), progress=False)
        assert_same_as_recipe(read_csv(tmp_path / "p.csv"), read_csv(out / "test_predictions.csv"))
    finally:
        shutil.move(moved, base)


# -- images -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image_run(tiny_vit_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("predict-image")
    data = image_folder(root / "data", {"train": 8, "val": 2, "test": 2})
    out = root / "out"
    recipe("image", ["--model_name_or_path", str(tiny_vit_dir), "--image_folder", str(data), "--output_dir", str(out),
                     "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "4", "--learning_rate",
                     "3e-3", "--num_train_epochs", "4", "--dataloader_num_workers", "0"])
    return out


def test_image_predictions_equal_the_recipes_from_a_folder_and_a_path_list(image_run, tmp_path):
    test_dir = image_run.parent / "data" / "test"
    recipe_rows = read_csv(image_run / "test_predictions.csv")
    predict(image_run, test_dir, tmp_path / "folder.csv", num_workers=1, progress=False)  # decoded in a worker
    rows = read_csv(tmp_path / "folder.csv")
    assert_same_as_recipe(rows, recipe_rows)
    assert list(rows[0])[3:] == ["prob_blue", "prob_green", "prob_red"]
    assert len({r["label"] for r in rows}) >= 2  # not one class for everything
    # a csv of paths relative to it, in another order: ids are the resolved paths, rows stay in the file's order
    paths = [Path(r["id"]).relative_to(test_dir).as_posix() for r in recipe_rows][::-1]
    (test_dir / "list.csv").write_text("path\n" + "\n".join(paths) + "\n")
    predict(image_run, test_dir / "list.csv", tmp_path / "list.csv", image_column="path", num_workers=0,
            progress=False)
    assert_same_as_recipe(read_csv(tmp_path / "list.csv"), recipe_rows[::-1])


def test_an_image_that_does_not_decode_is_named_before_the_model_loads(image_run, tmp_path, monkeypatch):
    monkeypatch.setattr(fpredict, "load_model", lambda *a, **k: pytest.fail("the model loaded before the images were checked"))
    folder = tmp_path / "images"
    folder.mkdir()
    colour_image("red", 1).save(folder / "good.png")
    colour_image("red", 2).save(folder / "cut.png")
    (folder / "cut.png").write_bytes((folder / "cut.png").read_bytes()[:60])
    with pytest.raises(CorruptImageError, match=f"{folder / 'cut.png'}"):
        predict(image_run, folder, tmp_path / "p.csv", num_workers=0, progress=False)
    (tmp_path / "list.csv").write_text("image,name\nimages/good.png,a\n,b\n")
    with pytest.raises(PredictError, match="list.csv: data row 2 has no image in column 'image'"):
        predict(image_run, tmp_path / "list.csv", tmp_path / "p.csv", num_workers=0, progress=False)


# -- tokens -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def token_run(tiny_bert_dir, tmp_path_factory) -> Path:
    rng = random.Random(0)
    root = tmp_path_factory.mktemp("predict-token")
    train = write_conll(root / "train.conll", [sentence(rng) for _ in range(64)])
    val = write_conll(root / "valid.conll", [sentence(rng) for _ in range(8)])
    write_conll(root / "test.conll", [long_sentence(rng)] + [sentence(rng) for _ in range(6)])
    out = root / "out"
    recipe("token", ["--model_name_or_path", str(tiny_bert_dir), "--train_file", str(train), "--validation_file",
                     str(val), "--test_file", str(root / "test.conll"), "--output_dir", str(out),
                     "--max_seq_length", "24", "--stride", "6", "--per_device_train_batch_size", "8",
                     "--per_device_eval_batch_size", "16", "--learning_rate", "3e-3", "--num_train_epochs", "6",
                     *ONE_RATE])
    return out


def test_token_predictions_equal_the_recipes_with_or_without_gold_tags(token_run, tmp_path):
    test_file = token_run.parent / "test.conll"
    expected = (token_run / "test_predictions.conll").read_text(encoding="utf-8")
    predict(token_run, test_file, tmp_path / "p.conll", progress=False)  # windows of 24 tokens, stride 6: the run's
    assert (tmp_path / "p.conll").read_text(encoding="utf-8") == expected  # word<TAB>gold<TAB>predicted, byte for byte
    predicted = [[line.split("\t")[2] for line in block.split("\n")] for block in expected.strip().split("\n\n")]
    assert sum(tag != "O" for tags in predicted for tag in tags) > 10  # it tags entities: the test can fail

    # words alone, one a line: word<TAB>predicted, the same tags
    gold = read_conll(test_file)
    (tmp_path / "words.txt").write_text("".join("\n".join(s) + "\n\n" for s in gold["tokens"]), encoding="utf-8")
    predict(token_run, tmp_path / "words.txt", tmp_path / "words.conll", progress=False)
    rows = [[line.split("\t") for line in block.split("\n")]
            for block in (tmp_path / "words.conll").read_text().strip().split("\n\n")]
    assert [[r[0] for r in s] for s in rows] == list(gold["tokens"])
    assert [[r[1] for r in s] for s in rows] == predicted and all(len(r) == 2 for s in rows for r in s)

    # JSON lines in (words under the run's tokens_column, no tags) and out
    (tmp_path / "words.jsonl").write_text("".join(json.dumps({"tokens": s}) + "\n" for s in gold["tokens"]))
    predict(token_run, tmp_path / "words.jsonl", tmp_path / "p.jsonl", progress=False)
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [line["predicted"] for line in lines] == predicted and "tags" not in lines[0]
    assert [line["id"] for line in lines] == [str(i) for i in range(len(gold))]


def test_tagless_token_files_read_for_prediction(tmp_path):
    from ftlib.data.token import read_jsonl

    (tmp_path / "a.conll").write_text("Paris\nis\n\nBerlin\tB-LOC\n")
    with pytest.raises(ValueError, match="line 1: expected `token<TAB>tag`"):
        read_conll(tmp_path / "a.conll")  # training still needs the tags
    words = read_conll(tmp_path / "a.conll", require_tags=False)
    assert list(words["tokens"]) == [["Paris", "is"], ["Berlin"]] and "tags" not in words.column_names
    (tmp_path / "b.jsonl").write_text('{"tokens": ["a", "b"]}\n{"tokens": ["c"], "tags": ["O"]}\n')
    rows = read_jsonl(tmp_path / "b.jsonl", require_tags=False)
    assert list(rows["tokens"]) == [["a", "b"], ["c"]] and "tags" not in rows.column_names
    with pytest.raises(ValueError, match="no column 'tags'"):
        read_jsonl(tmp_path / "b.jsonl")


# -- multi-label thresholds ---------------------------------------------------------------------------------------

def test_best_threshold_per_label():
    # predicting the top 3 (cut half-way between 0.4 and 0.3) catches both positives for one false positive
    assert best_threshold([0.9, 0.8, 0.4, 0.3, 0.2], [1, 0, 1, 0, 0]) == pytest.approx((0.35, 0.5, 0.8))
    assert best_threshold([0.7, 0.6], [1, 1]) == (0.5, 1.0, 1.0)  # a tie goes to the cut nearest 0.5
    assert best_threshold([0.7, 0.2], [0, 0]) == (0.5, 0.0, 0.0)  # no positive example: nothing to tune
    tuned = tune_thresholds(np.array([[0.9, 0.7], [0.8, 0.6], [0.4, 0.2]]), np.array([[1, 1], [0, 1], [1, 0]]),
                            ["a", "b"])
    assert tuned["thresholds"] == {"a": pytest.approx(0.2), "b": 0.5} and tuned["rows"] == 3
    assert tuned["f1"]["a"] == {"at_0.5": pytest.approx(0.5), "tuned": pytest.approx(0.8), "positives": 2}


def test_tune_thresholds_is_for_multi_label():
    assert thresholds_wanted(None, "multi_label_classification") is True
    assert thresholds_wanted(False, "multi_label_classification") is False
    assert thresholds_wanted(None, "single_label_classification") is False
    with pytest.raises(ValueError, match="--tune_thresholds applies to multi-label classification"):
        thresholds_wanted(True, "single_label_classification")


def multi_label_rows(repeat: int) -> list[dict]:
    rows = []
    for text in (POSITIVE + NEGATIVE) * repeat:
        tags = (["good"] if text in POSITIVE else ["bad"]) + (["short"] if len(text) < 28 else [])
        rows.append({"text": text, "tags": ";".join(tags)})
    return rows


@pytest.fixture(scope="module")
def multi_run(tiny_bert_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("predict-multi")
    train = write_csv(root / "train.csv", multi_label_rows(4))
    val = write_csv(root / "val.csv", multi_label_rows(1))
    write_csv(root / "test.csv", [{"text": t} for t in TEST_TEXTS])
    out = root / "out"
    recipe("text", ["--model_name_or_path", str(tiny_bert_dir), "--train_file", str(train), "--validation_file",
                    str(val), "--test_file", str(root / "test.csv"), "--output_dir", str(out), "--label_column", "tags",
                    "--label_separator", ";", "--learning_rate", "2e-3", "--head_learning_rate", "2e-3",
                    "--num_train_epochs", "3", "--freeze_embeddings", "false", "--per_device_train_batch_size", "8"])
    return out


def test_multi_label_thresholds_are_tuned_saved_and_applied(multi_run, tmp_path):
    saved = json.loads((multi_run / "thresholds.json").read_text())
    names = ["bad", "good", "short"]
    assert sorted(saved["thresholds"]) == names and saved["tuned_on"] == "validation" and saved["rows"] == 16
    for name in names:
        assert saved["f1"][name]["tuned"] >= saved["f1"][name]["at_0.5"]
    assert any(saved["f1"][n]["tuned"] > saved["f1"][n]["at_0.5"] for n in names)  # tuning changed something
    manifest = json.loads((multi_run / "MANIFEST.sha256.json").read_text())
    assert "thresholds.json" in manifest["files"] and "thresholds.json" in manifest["published"]
    assert verify_manifest(multi_run) == []

    # predict applies them, as the recipe's test predictions did
    test_file = multi_run.parent / "test.csv"
    predict(multi_run, test_file, tmp_path / "p.csv", progress=False)
    rows = read_csv(tmp_path / "p.csv")
    assert_same_as_recipe(rows, read_csv(multi_run / "test_predictions.csv"))
    cuts = saved["thresholds"]
    for row in rows:
        probs = probs_of(row)
        assert chosen(row) == [n for n in names if probs[n] >= cuts[n]]
    at_half = [[n for n in names if probs_of(r)[n] >= 0.5] for r in rows]
    assert at_half != [chosen(r) for r in rows]  # the tuned cuts mattered

    # --threshold: one cut for every label instead
    predict(multi_run, test_file, tmp_path / "half.csv", threshold=0.5, progress=False)
    assert [chosen(r) for r in read_csv(tmp_path / "half.csv")] == at_half

    # thresholds.json is what predict reads: a copy with other cuts predicts accordingly
    copy = tmp_path / "copy"
    shutil.copytree(multi_run, copy)
    (copy / "thresholds.json").write_text(json.dumps({"thresholds": {"bad": 0.0, "good": 1.01, "short": 0.5}}))
    predict(copy, test_file, tmp_path / "edited.csv", progress=False)
    for row in read_csv(tmp_path / "edited.csv"):
        labels = chosen(row)
        assert "bad" in labels and "good" not in labels and ("short" in labels) == (probs_of(row)["short"] >= 0.5)


def test_tune_thresholds_false_keeps_one_half(tiny_bert_dir, tmp_path):
    train = write_csv(tmp_path / "train.csv", multi_label_rows(2))
    out = tmp_path / "out"
    recipe("text", ["--model_name_or_path", str(tiny_bert_dir), "--train_file", str(train), "--output_dir", str(out),
                    "--label_column", "tags", "--label_separator", ";", "--num_train_epochs", "1",
                    "--tune_thresholds", "false"])
    assert not (out / "thresholds.json").exists()
