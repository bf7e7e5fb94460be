"""Empty inputs (issue 13, item 8): counted per split and warned about with the first data rows, dropped with
--drop_empty, an error when they are more than a small share of a split."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from datasets import Dataset, DatasetDict
from test_flags import parse, recipe, write_csv

from ftlib.data.files import EMPTY_SHARE_LIMIT, check_empty_inputs, empty_rows
from ftlib.tasks.image_classification import ImageDataArguments
from ftlib.tasks.text_classification import TextDataArguments
from ftlib.tasks.token_classification import TokenDataArguments


def text_rows(n: int, empty: dict[int, str | None]) -> list[dict]:
    rows = [{"text": f"{'great' if i % 2 else 'awful'} film {i}", "label": "pos" if i % 2 else "neg"} for i in range(n)]
    for i, value in empty.items():
        rows[i]["text"] = value
    return rows


def test_counted_warned_dropped_or_refused(caplog):
    args = TextDataArguments(train_file="train.csv", test_file="test.csv")
    blank = {3: "", 7: "   "}
    data = DatasetDict(train=Dataset.from_list(text_rows(60, blank)), test=Dataset.from_list(text_rows(30, {0: ""})))
    assert empty_rows(data["train"], ["text", None]) == [3, 7]
    with caplog.at_level(logging.WARNING, logger="ftlib"):
        out = check_empty_inputs(DatasetDict(data), ["text", None], args, "text")
    assert len(out["train"]) == 60 and len(out["test"]) == 30  # warned, kept
    assert "train.csv: 2 of 60 rows have an empty text ('text'; data rows 4, 8)" in caplog.text
    assert "--drop_empty drops them" in caplog.text and "kept: each gets a prediction" in caplog.text

    dropping = TextDataArguments(train_file="train.csv", test_file="test.csv", drop_empty=True)
    out = check_empty_inputs(DatasetDict(data), ["text"], dropping, "text")
    assert len(out["train"]) == 58 and "" not in out["train"]["text"] and len(out["test"]) == 30

    many = DatasetDict(train=Dataset.from_list(text_rows(20, {1: None, 2: "", 5: ""})))
    assert 3 / 20 > EMPTY_SHARE_LIMIT
    with pytest.raises(ValueError, match=r"train.csv: 3 of 20 rows have an empty text \('text'; data rows 2, 3, 6\), "
                                         r"more than 5% of the split.*--drop_empty"):
        check_empty_inputs(many, ["text"], args, "text")
    assert len(check_empty_inputs(many, ["text"], dropping, "text")["train"]) == 17
    with pytest.raises(ValueError, match="every row has an empty text"):
        check_empty_inputs(DatasetDict(train=Dataset.from_list(text_rows(2, {0: "", 1: None}))), ["text"], dropping, "text")


def test_pairs_images_and_words(tmp_path):
    pairs = Dataset.from_list([{"a": "x", "b": "y"}, {"a": "x", "b": None}, {"a": "", "b": "y"}])
    assert empty_rows(pairs, ["a", "b"]) == [1, 2]
    # an image csv: an empty path cell stays empty (it used to become the csv's own folder)
    from ftlib.data.image import load_image_data

    (tmp_path / "a.png").write_bytes(b"")
    write_csv(tmp_path / "train.csv", [{"image": "a.png", "label": "x"}, {"image": "", "label": "y"},
                                       {"image": "  ", "label": "y"}])
    raw = load_image_data(ImageDataArguments(train_file=str(tmp_path / "train.csv")))
    assert empty_rows(raw["train"], ["image"]) == [1, 2]
    # words: a JSON lines sentence with no words
    from ftlib.data.token import load_token_data

    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [{"tokens": ["a"], "tags": ["O"]}, {"tokens": [], "tags": []}]))
    assert empty_rows(load_token_data(path)["train"], ["tokens"]) == [1]
    with pytest.raises(ValueError, match=r"1 of 2 rows have an empty sentence \('tokens'; data row 2\)"):
        check_empty_inputs(load_token_data(path), ["tokens"], TokenDataArguments(train_file=str(path)), "sentence")


def test_text_recipe_warns_then_drops(tmp_path, tiny_bert_dir, caplog):
    torch.set_num_threads(1)
    train = write_csv(tmp_path / "train.csv", text_rows(40, {4: ""}))

    def run(*extra) -> dict:
        argv = ["--model_name_or_path", str(tiny_bert_dir), "--train_file", str(train), "--output_dir",
                str(tmp_path / f"out{len(extra)}"), "--use_cpu", "true", "--max_steps", "1", "--save_strategy", "no",
                "--eval_strategy", "no", "--disable_tqdm", "true", "--report_to", "none", *extra]
        return recipe("text_cls").main(*parse("text_cls", argv))

    with caplog.at_level(logging.WARNING, logger="ftlib"):
        metrics = run()
    assert f"{train}: 1 of 40 rows have an empty text ('text'; data row 5)" in caplog.text
    assert metrics["train_samples"] == 36  # 40 - 4 held out for validation
    assert run("--drop_empty", "true")["train_samples"] == 35
