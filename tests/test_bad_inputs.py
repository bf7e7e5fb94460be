"""Bad input, collected: one table across the recipes (text, image, token). Every row must fail with an error
that names the culprit (a column, a file, a label, a flag, a config key, a path), before any training step,
leaving an earlier finished output directory byte for byte as it was and no checkpoint behind.

A recipe joins the table with an entry in RECIPES (its module, its data-argument class, the arguments of a
good run) and rows in CASES: ``(recipe, what is wrong, extra arguments, regex the message must match)``.
``{name}`` in the arguments is a file made by the ``inputs`` fixture; ``{config:...}`` is a YAML config with
that content. Run with ``-s`` to print the table (input -> message).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import image_cls
import pytest
import text_cls
import token_cls
from PIL import Image
from transformers import TrainingArguments

from ftlib.run.cli import parse_args
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.tasks.image_classification import ImageDataArguments
from ftlib.tasks.text_classification import TextDataArguments
from ftlib.tasks.token_classification import TokenDataArguments
from ftlib.training.arguments import ModelArguments
from ftlib.training.trainer import FtTrainer


@dataclass
class Recipe:
    module: object
    data_args: type
    good: list[str]  # data arguments of a run that works; a row's arguments come after (the last flag wins)
    model: str  # fixture giving the checkpoint


RECIPES = {
    "text": Recipe(text_cls, TextDataArguments, ["--train_file", "{text_train}"], "tiny_bert_dir"),
    "image": Recipe(image_cls, ImageDataArguments, ["--train_file", "{image_train}", "--image_column", "path",
                                                          "--dataloader_num_workers", "0"],
                    "tiny_vit_dir"),
    "token": Recipe(token_cls, TokenDataArguments, ["--train_file", "{token_train}"], "tiny_bert_dir"),
}

CASES = [
    # missing columns
    ("text", "missing label column", ["--label_column", "sentiment"],
     r"text_train\.csv: no column 'sentiment'; the columns are text, label"),
    ("image", "missing image column", ["--image_column", "picture"],
     r"image_train\.csv: no column 'picture'; the columns are path, label"),
    ("token", "missing tags key", ["--train_file", "{token_no_tags}"], r"token_no_tags\.jsonl, line 1: .*'tags'"),
    # empty splits
    ("text", "empty validation file (header only)", ["--validation_file", "{text_header_only}"],
     r"data file has no rows: .*text_header_only\.csv"),
    ("image", "empty validation file", ["--validation_file", "{image_empty}"], r"data file is empty: .*image_empty\.csv"),
    ("token", "empty validation file", ["--validation_file", "{token_empty}"], r"data file is empty: .*token_empty\.jsonl"),
    # labels the training data never had
    ("text", "unseen validation label", ["--validation_file", "{text_unseen}"],
     r"text_unseen\.csv: label 'meh' \(data row 1\) does not occur in the training data"),
    ("image", "unseen validation label", ["--validation_file", "{image_unseen}"],
     r"image_unseen\.csv: label 'purple' .*does not occur in the training data"),
    ("token", "unseen validation tag", ["--validation_file", "{token_unseen}"], r"B-MISC.*token_unseen\.jsonl|token_unseen\.jsonl.*B-MISC"),
    # corrupt images
    ("image", "corrupt image file", ["--train_file", "{image_corrupt_train}"], r"Corrupt or unreadable image .*broken\.png"),
    # wrong types and unknown keys in a YAML config
    ("text", "YAML learning_rate: fast", ["--config", "{config:learning_rate: fast}"],
     r"--learning_rate\S*: invalid float value: 'fast' \(from .*config-\d+\.yaml"),
    ("image", "YAML image_size: big", ["--config", "{config:image_size: big}"], r"--image_size\S*: invalid int value: 'big'"),
    ("token", "YAML stride: [1, 2]", ["--config", "{config:stride: [1, 2]}"], r"key 'stride' takes a single value"),
    ("text", "YAML unknown key learning_rte", ["--config", "{config:learning_rte: 0.001}"],
     r"unknown key 'learning_rte' \(did you mean: .*learning_rate"),
    ("image", "YAML unknown key augmentaton", ["--config", "{config:augmentaton: light}"], r"unknown key 'augmentaton'"),
    ("token", "YAML unknown key tag_sceme", ["--config", "{config:tag_sceme: BIO}"], r"unknown key 'tag_sceme'"),
    # batch sizes
    ("text", "zero train batch size", ["--per_device_train_batch_size", "0"], r"--per_device_train_batch_size must be >= 1, got 0"),
    ("image", "negative train batch size", ["--per_device_train_batch_size", "-1"],
     r"--per_device_train_batch_size must be >= 1, got -1"),
    ("token", "zero eval batch size", ["--per_device_eval_batch_size", "0"], r"--per_device_eval_batch_size must be >= 1, got 0"),
    ("text", "zero gradient accumulation", ["--gradient_accumulation_steps", "0"], r"--gradient_accumulation_steps must be >= 1, got 0"),
    # the output directory is a file
    *[(recipe, "output dir is a file", ["--output_dir", "{a_file}"], r"--output_dir .*a_file\.txt exists and is a file")
      for recipe in RECIPES],
]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def png(path: Path, colour: tuple[int, int, int]) -> str:
    Image.new("RGB", (8, 8), colour).save(path)
    return path.name


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Every file a row names: good training data per recipe, and each bad variant."""
    d = tmp_path_factory.mktemp("bad-inputs")
    f: dict[str, Path] = {}
    texts = [("a wonderful film", "pos"), ("a dull mess", "neg")] * 6
    f["text_train"] = write(d / "text_train.csv", "text,label\n" + "".join(f"{t} {i},{y}\n" for i, (t, y) in enumerate(texts)))
    f["text_header_only"] = write(d / "text_header_only.csv", "text,label\n")
    f["text_unseen"] = write(d / "text_unseen.csv", "text,label\nso so,meh\ngreat,pos\n")

    images = d / "images"
    images.mkdir()
    rows = [(png(images / f"{c}{i}.png", rgb), c) for i in range(6) for c, rgb in (("red", (220, 30, 30)), ("blue", (30, 30, 220)))]
    table = "path,label\n" + "".join(f"images/{p},{c}\n" for p, c in rows)
    f["image_train"] = write(d / "image_train.csv", table)
    f["image_empty"] = write(d / "image_empty.csv", "")
    f["image_unseen"] = write(d / "image_unseen.csv", f"path,label\nimages/{rows[0][0]},purple\nimages/{rows[1][0]},blue\n")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    f["image_corrupt_train"] = write(d / "image_corrupt_train.csv", table + "images/broken.png,red\n")

    sentences = [{"tokens": ["Paris", "is", "big"], "tags": ["B-LOC", "O", "O"]},
                 {"tokens": ["Ann", "sings"], "tags": ["B-PER", "O"]}] * 6
    f["token_train"] = write(d / "token_train.jsonl", "".join(json.dumps(s) + "\n" for s in sentences))
    f["token_no_tags"] = write(d / "token_no_tags.jsonl", json.dumps({"tokens": ["a"], "ner": ["O"]}) + "\n")
    f["token_empty"] = write(d / "token_empty.jsonl", "")
    f["token_unseen"] = write(d / "token_unseen.jsonl", json.dumps({"tokens": ["Rome", "wins"], "tags": ["B-MISC", "O"]}) + "\n")
    f["a_file"] = write(d / "a_file.txt", "I am a file, not a folder\n")
    return f


def expand(args: list[str], files: dict[str, Path], folder: Path) -> list[str]:
    out = []
    for arg in args:
        config = re.fullmatch(r"\{config:(.*)\}", arg)
        if config:
            path = folder / f"config-{len(list(folder.glob('config-*')))}.yaml"
            out.append(str(write(path, config.group(1) + "\n")))
        else:
            out.append(re.sub(r"\{(\w+)\}", lambda m: str(files[m.group(1)]), arg))
    return out


def snapshot(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


class TrainingStarted(Exception):
    pass


def test_bad_inputs_fail_clearly_before_training(request, inputs, tmp_path, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise TrainingStarted("Trainer.train was called")

    monkeypatch.setattr(FtTrainer, "train", refuse)
    # controls: each recipe's good arguments do reach training (so a row fails for its own fault, and the
    # "before training" check below can tell)
    controls = [(name, "(control: the good arguments)", [], None) for name in RECIPES]
    table, failures = [], []
    for number, (recipe_name, what, args, pattern) in enumerate(controls + CASES):
        recipe = RECIPES[recipe_name]
        finished = tmp_path / f"finished-{number}"  # an earlier result the failing run must not touch
        finished.mkdir()
        (finished / "model.safetensors").write_bytes(b"earlier result")
        (finished / "all_results.json").write_text('{"eval_accuracy": 0.9}\n')
        model = request.getfixturevalue(recipe.model)
        argv = expand(["--model_name_or_path", str(model), "--output_dir", str(finished), "--overwrite_output_dir", "true",
                       "--use_cpu", "true", "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1",
                       *recipe.good, *args], inputs, tmp_path)
        target = Path(argv[len(argv) - 1 - argv[::-1].index("--output_dir") + 1])
        before = snapshot(target)
        try:
            recipe.module.main(*parse_args((ModelArguments, recipe.data_args, FineTuneArguments, TrainingArguments),
                                           argv, defaults=recipe.module.RECIPE_DEFAULTS))
            error = None
        except Exception as err:  # noqa: BLE001 - every outcome is judged below
            error = err
        message = f"{type(error).__name__}: {error}" if error else "no error"
        table.append((recipe_name, what, message))
        problems = []
        if pattern is None:
            if not isinstance(error, TrainingStarted):
                problems.append(f"the good arguments did not reach training: {message}")
        elif not isinstance(error, (ValueError, OSError)):
            problems.append(f"expected a ValueError or OSError, got {message}")
        elif not re.search(pattern, str(error)):
            problems.append(f"message does not match {pattern!r}: {message}")
        if snapshot(target) != before:
            problems.append("the earlier output changed")
        if target.is_dir() and list(target.glob("checkpoint-*")):
            problems.append("a checkpoint was written")
        failures += [f"{recipe_name}: {what}: {p}" for p in problems]

    width = max(len(f"{r}: {w}") for r, w, _ in table)
    print("\n" + "\n".join(f"{f'{r}: {w}':<{width}}  ->  {m}" for r, w, m in table))
    assert {r for r, _, _ in table} == set(RECIPES) and len(table) == len(controls) + len(CASES)
    assert not failures, "\n".join(failures)
