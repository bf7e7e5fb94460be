"""Issue 13 item 9: every checkpoint saves the run's effective configuration; a resume with a different one is
refused (naming each key and both values) before anything loads, unless --allow_config_change, and then the
printed group table shows the learning rates the restored optimizer really uses."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from test_text_cls import base_argv, run, sentiment_rows, write_csv

from ftlib.outputs.hub import files_to_push
from ftlib.run.cli import ConfigError, config_changes
from ftlib.run.output_dir import FINISHED_MARKERS

# 32 rows, batch 8: 4 steps an epoch; the first run stops after checkpoint-4 (layer decay 0.5: every group its own lr)
FIRST = ("--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "no",
         "--logging_steps", "1", "--layer_decay", "0.5", "--seed", "5",
         "--min_train_steps", "0")  # as conftest sets it for each test (this fixture outlives them)


def argv(model_dir, data: Path, out: Path, *extra) -> list[str]:
    return base_argv(model_dir, data, out, *FIRST, *extra)


@pytest.fixture(scope="module")
def stopped(tiny_bert_dir, tmp_path_factory) -> tuple[Path, Path]:
    """``(train.csv, output dir)`` of a run stopped after checkpoint-4 (its final files removed, as if killed)."""
    folder = tmp_path_factory.mktemp("resume-config")
    train = write_csv(folder / "train.csv", sentiment_rows(2))
    out = folder / "out"
    run(argv(tiny_bert_dir, train, out))
    for name in FINISHED_MARKERS:
        (out / name).unlink(missing_ok=True)
    return train, out


def copy(stopped_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(stopped_dir, out)
    return out


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


def group_lrs(table: str) -> dict[str, str]:
    """``{group: lr}`` from a printed group table (columns: group, params, trainable, lr, weight_decay, ...)."""
    header, _, *lines = table.splitlines()
    params, lr, decay = (header.index(f"  {name}") + 2 for name in ("params", "lr", "weight_decay"))
    rows = {line[:params].strip(): line[lr:decay].strip() for line in lines if line.strip()}
    return {name: value for name, value in rows.items() if value != "-"}


def checkpoint_lrs(checkpoint: Path) -> dict[str, str]:
    groups = torch.load(checkpoint / "optimizer.pt", weights_only=True)["param_groups"]
    return {g["name"]: f"{g['initial_lr']:.3g}" for g in groups}


def test_config_changes_skip_resumable_and_unknown_keys():
    saved = "layer_decay: 0.5\nmax_steps: 4\nlogging_steps: 1\nold_key: 1\nlearning_rate: 0.002\n"
    now = "layer_decay: 1.0\nmax_steps: 8\nlogging_steps: 5\nnew_key: 2\nlearning_rate: 0.002\n"
    assert config_changes(saved, now) == {"layer_decay": (0.5, 1.0)}


def test_every_checkpoint_saves_the_config_and_is_not_pushed(stopped):
    _, out = stopped
    saved = (out / "config.yaml").read_text()
    assert yaml.safe_load(saved)["layer_decay"] == 0.5
    for step in (2, 4):
        assert (out / f"checkpoint-{step}" / "config.yaml").read_text() == saved
    assert not any(str(p).startswith("checkpoint-") for p in map(str, files_to_push(out)))


def test_changed_config_is_refused_before_anything_loads(tiny_bert_dir, stopped, tmp_path):
    train, stopped_dir = stopped
    out = copy(stopped_dir, tmp_path)
    before = snapshot(out)
    missing_model = tmp_path / "no-such-model"  # the refusal comes before the model (or the data) would load
    with pytest.raises(ConfigError) as info:
        run(argv(missing_model, train, out, "--layer_decay", "1.0", "--learning_rate", "1e-3", "--max_steps", "8"))
    message = str(info.value)
    assert "checkpoint-4" in message and "--allow_config_change" in message
    assert "layer_decay: 0.5 in the checkpoint, 1.0 now" in message
    assert "learning_rate: 0.002 in the checkpoint, 0.001 now" in message
    assert "max_steps" not in message and "model_name_or_path: " in message  # a different model is a change too
    assert snapshot(out) == before  # nothing trained, nothing written


def test_accepted_change_resumes_and_shows_the_checkpoints_rates(tiny_bert_dir, stopped, tmp_path, capsys, caplog):
    train, stopped_dir = stopped
    out = copy(stopped_dir, tmp_path)
    expected = checkpoint_lrs(out / "checkpoint-4")
    assert len(set(expected.values())) > 2  # layer decay 0.5: the groups' rates differ
    run(argv(tiny_bert_dir, train, out, "--layer_decay", "1.0", "--learning_rate", "1e-3", "--max_steps", "8",
             "--allow_config_change", "true"))
    printed = capsys.readouterr().out
    first, _, resumed = printed.partition("Resumed from")
    assert resumed, "no resumed group table printed"
    table = resumed.split("schedule):\n", 1)[1].split("\nlearning rates at step", 1)[0]
    flags_table = "\n".join(first.split("parameter groups:\n", 1)[1].splitlines()[: len(table.splitlines())])
    assert set(group_lrs(flags_table).values()) == {"0.001", "0.002"}  # from the flags, before the state loads
    assert "min_train_steps" not in caplog.text and "layer_decay: 0.5 in the checkpoint, 1.0 now" in caplog.text
    assert group_lrs(table) == expected  # what the restored optimizer uses
    assert table in (out / "README.md").read_text()  # the model card's table too
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    # the first step after the resume trains at the restored (end of schedule) rate; the next follow the new one
    logged = next(e for e in state["log_history"] if e.get("step") == 6 and "loss" in e)
    logged = {k.removeprefix("lr/"): v for k, v in logged.items() if k.startswith("lr/")}
    key = {name: name.replace(" (no decay)", "_no_decay").replace(" ", "_") for name in expected}
    assert logged == pytest.approx({key[name]: float(lr) * logged["head"] / float(expected["head"])
                                    for name, lr in expected.items()}, rel=1e-2)
    assert logged["embeddings"] / logged["head"] == pytest.approx(0.25)  # the new flags would make it 0.5


def test_allowed_changes_resume_silently(tiny_bert_dir, stopped, tmp_path, capsys, caplog):
    train, stopped_dir = stopped
    out = copy(stopped_dir, tmp_path)
    with caplog.at_level(logging.WARNING, logger="ftlib"):
        run(argv(tiny_bert_dir, train, out, "--max_steps", "8", "--logging_steps", "3",
                 "--per_device_eval_batch_size", "4", "--dataloader_num_workers", "0"))
    assert "Resumed from" not in capsys.readouterr().out
    assert not [r for r in caplog.records if "config" in r.getMessage()]
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 8
    assert yaml.safe_load((out / "checkpoint-8" / "config.yaml").read_text())["max_steps"] == 8


def test_checkpoint_without_config_resumes_with_a_warning(tiny_bert_dir, stopped, tmp_path, caplog):
    train, stopped_dir = stopped
    out = copy(stopped_dir, tmp_path)
    (out / "checkpoint-4" / "config.yaml").unlink()
    with caplog.at_level(logging.WARNING, logger="ftlib"):
        run(argv(tiny_bert_dir, train, out, "--max_steps", "6", "--layer_decay", "0.5"))
    assert any("has no config.yaml" in r.getMessage() for r in caplog.records)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 6
