"""Hyperparameter search (``--hp_search``, issue 14 part 2): the space and its checks, Trainer's trial hooks in
FtTrainer, and the recipes end to end on tiny models: a fresh model per trial with the trial's values, the best
values in the final model's config and card, pruning, and a search that resumes after a crash."""

from __future__ import annotations

import json
from types import SimpleNamespace

import image_cls
import optuna
import pytest
import text_cls
import token_cls
from PIL import Image
from test_cv import run_text, text_argv, text_rows
from test_flags import write_csv
from transformers import TrainingArguments
from transformers.trainer_utils import HPSearchBackend

import ftlib.run.hp_search as hp
import ftlib.training.trainer
from ftlib.outputs.hub import files_to_push
from ftlib.outputs.integrity import verify_manifest
from ftlib.run.cli import parse_args
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.tasks.image_classification import ImageDataArguments
from ftlib.tasks.text_classification import TextDataArguments
from ftlib.tasks.token_classification import TokenDataArguments
from ftlib.training.arguments import ModelArguments

TEXT = (ModelArguments, TextDataArguments, FineTuneArguments, TrainingArguments)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest


def parsed(*extra, defaults=None):
    argv = ["--model_name_or_path", "m", "--train_file", "t.csv", "--output_dir", "o", *map(str, extra)]
    _, _, ft_args, training_args = parse_args(TEXT, argv, defaults=defaults or text_cls.RECIPE_DEFAULTS)
    return training_args, ft_args


# -- the space ----------------------------------------------------------------------------------------------------
def test_default_space_is_centred_on_the_run_values():
    args, ft = parsed("--hp_search", 4)
    space = hp.search_space(args, ft)
    assert list(space) == ["learning_rate", "head_learning_rate", "layer_decay", "warmup_steps", "num_train_epochs"]
    lr, head = space["learning_rate"], space["head_learning_rate"]
    assert (lr.low, lr.high, lr.log) == pytest.approx((1e-4 / 3, 3e-4, True))  # the text recipe's 1e-4
    assert (head.low, head.high, head.log) == pytest.approx((1e-3 / 3, 3e-3, True))
    assert (space["num_train_epochs"].low, space["num_train_epochs"].high, space["num_train_epochs"].integer) == (2, 5, True)
    # trial 0: the run's own values
    assert hp.start_values(space, args, ft) == {"learning_rate": 1e-4, "head_learning_rate": 1e-3, "layer_decay": 0.9,
                                                 "warmup_steps": 0.1, "num_train_epochs": 3}
    args, ft = parsed("--hp_search", 4, "--min_train_steps", 250)  # the recipe's budget (tests zero it)
    # 2,000 rows at batch 8: 250 steps take 1 epoch, so 2-5 epochs all count
    assert hp.search_space(args, ft, num_rows=2000)["num_train_epochs"].low == 2
    # 400 rows: the budget trains 5 epochs whatever fewer are asked, so the search starts there; trial 0 keeps the
    # run's own 3 (trained as 5, but evaluated as 3 epochs: not the same run as 5 asked)
    space = hp.search_space(args, ft, num_rows=400)
    assert (space["num_train_epochs"].low, space["num_train_epochs"].high) == (5, 7)
    assert hp.start_values(space, args, ft)["num_train_epochs"] == 3
    args, ft = parsed("--hp_search", 4, "--max_steps", 50)  # epochs mean nothing with --max_steps
    assert "num_train_epochs" not in hp.search_space(args, ft)


def test_hp_space_narrows_widens_and_extends_the_space():
    block = {"learning_rate": [1e-5, 1e-4], "layer_decay": None, "warmup_steps": {"low": 0.0, "high": 0.3},
             "weight_decay": {"choices": [0.0, 0.01]}, "lora_r": [4, 16], "head_learning_rate": {"low": 1e-4,
                                                                                                   "high": 1e-2, "log": False}}
    args, ft = parsed("--hp_search", 4, "--hp_space", json.dumps(block), "--lora", "true")
    space = hp.search_space(args, ft)
    assert "layer_decay" not in space
    assert (space["learning_rate"].low, space["learning_rate"].high, space["learning_rate"].log) == (1e-5, 1e-4, True)
    assert not space["head_learning_rate"].log and space["warmup_steps"].high == 0.3
    assert space["weight_decay"].choices == (0.0, 0.01)
    assert space["lora_r"].integer and (space["lora_r"].low, space["lora_r"].high) == (4, 16)
    # values land on their owner: TrainingArguments (a copy) or the ftlib arguments (checked again)
    trial_args, trial_ft = hp.apply_values({"learning_rate": 5e-5, "lora_r": 12, "weight_decay": 0.01}, args, ft)
    assert (trial_args.learning_rate, trial_args.weight_decay, trial_ft.lora_r) == (5e-5, 0.01, 12)
    assert (args.learning_rate, ft.lora_r) == (1e-4, 8)


@pytest.mark.parametrize("block, message", [
    ({"learnin_rate": [1e-5, 1e-4]}, r"unknown key 'learnin_rate' \(not an argument of this recipe\)"),
    ({"output_dir": {"choices": ["a", "b"]}}, r"unknown key 'output_dir' \(not searchable\)"),
    ({"learning_rate": [1e-4, 1e-5]}, "'learning_rate': a range needs numbers low < high"),
    ({"learning_rate": [0.0, 1e-3]}, "'learning_rate': a log-scale range needs low > 0"),
    ({"learning_rate": [1e-5, 1e-4, 1e-3]}, r"'learning_rate': a range is \[low, high\]"),
    ({"layer_decay": [0.5, 1.5]}, r"'layer_decay': 1.5 is not a valid value: --layer_decay must be in \(0, 1\]"),
    ({"layer_decay": {"low": 0.5, "hihg": 0.9}}, "'layer_decay': unknown setting 'hihg'"),
    ({"layer_decay": None, "learning_rate": None, "head_learning_rate": None, "warmup_steps": None,
      "num_train_epochs": None}, "--hp_space leaves nothing to search"),
])
def test_bad_spaces_are_refused_naming_the_key(block, message):
    args, ft = parsed("--hp_search", 4, "--hp_space", json.dumps(block))
    with pytest.raises(ValueError, match=message):
        hp.search_space(args, ft)


def test_search_flags_are_checked_when_parsed(tmp_path):
    with pytest.raises(ValueError, match="--hp_space does nothing without --hp_search"):
        parsed("--hp_space", '{"layer_decay": null}')
    with pytest.raises(ValueError, match="--hp_search with --lr_find"):
        parsed("--hp_search", 4, "--lr_find", "true")
    with pytest.raises(ValueError, match="--hp_search must be >= 0"):
        parsed("--hp_search", -1)
    config = tmp_path / "search.yaml"  # the YAML block of a config
    config.write_text("hp_search: 6\nhp_space:\n  learning_rate: [1.0e-5, 1.0e-4]\n  layer_decay: null\n")
    _, _, ft, _ = parse_args(TEXT, ["--config", str(config), "--model_name_or_path", "m", "--train_file", "t.csv",
                                    "--output_dir", "o"])
    assert ft.hp_search == 6 and json.loads(ft.hp_space) == {"learning_rate": [1e-5, 1e-4], "layer_decay": None}


def test_several_processes_are_refused_before_any_trial(tmp_path):
    args = SimpleNamespace(world_size=2)
    ft = FineTuneArguments(hp_search=3)
    with pytest.raises(ValueError, match="--hp_search runs its trials in one process; this run has 2"):
        hp.search_hyperparameters(None, args, ft, None, None)
    assert not list(tmp_path.iterdir())


# -- Trainer's trial hooks in FtTrainer ---------------------------------------------------------------------------
class PruneAfter(optuna.pruners.BasePruner):
    def __init__(self, reports: int | None):
        self.reports = reports

    def prune(self, study, trial) -> bool:
        return self.reports is not None and len(trial.intermediate_values) >= self.reports


def trial_of(prune_after_reports=None):
    return optuna.create_study(direction="minimize", pruner=PruneAfter(prune_after_reports)).ask()


def search_mode(trainer):
    trainer.hp_search_backend = HPSearchBackend.OPTUNA
    trainer.hp_space = lambda _: {}
    trainer.compute_objective = lambda metrics: metrics["eval_loss"]
    return trainer


def test_each_evaluation_is_reported_at_its_quarter_of_training(make_core_trainer, core_data):
    trainer = search_mode(make_core_trainer(FineTuneArguments(), eval=core_data(8, seed=1), max_steps=8,
                                            eval_strategy="steps", eval_steps=2))
    trial = trial_of()
    trainer.train(trial=trial)
    reports = trial.study.trials[0].intermediate_values
    assert sorted(reports) == [1, 2, 3, 4]  # evaluations at steps 2, 4, 6, 8 of 8
    losses = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    assert [reports[k] for k in sorted(reports)] == pytest.approx(losses)


def test_a_pruned_trial_stops_at_that_evaluation(make_core_trainer, core_data):
    trainer = search_mode(make_core_trainer(FineTuneArguments(), eval=core_data(8, seed=1), max_steps=8,
                                            eval_strategy="steps", eval_steps=2))
    with pytest.raises(optuna.TrialPruned):
        trainer.train(trial=trial_of(prune_after_reports=2))
    assert trainer.state.global_step == 4


# -- the recipes end to end -----------------------------------------------------------------------------------------
@pytest.fixture
def built(monkeypatch) -> list:
    """Every model the recipe prepared and the rates of every optimizer built: one per trial, then the final."""
    calls: list = []
    prepare, groups = ftlib.training.trainer.prepare_model, ftlib.training.trainer.build_param_groups

    def recorded_prepare(model, ft_args, task_type=None):
        # the model itself, not its id: a freed model's id can be reused by the next one
        calls.append({"model": model, "ft": ft_args})
        return prepare(model, ft_args, task_type)

    def recorded_groups(model, anatomy, lr, head_lr=None, layer_decay=1.0, **kwargs):
        calls[-1].update(lr=lr, head_lr=head_lr, layer_decay=layer_decay)
        return groups(model, anatomy, lr, head_lr=head_lr, layer_decay=layer_decay, **kwargs)

    monkeypatch.setattr(text_cls, "prepare_model", recorded_prepare)
    monkeypatch.setattr(ftlib.training.trainer, "build_param_groups", recorded_groups)
    return calls


def test_text_search_trains_a_fresh_model_per_trial_then_the_best(tiny_bert_dir, tmp_path, built):
    train = write_csv(tmp_path / "train.csv", text_rows())
    out = tmp_path / "out"
    argv = text_argv(tiny_bert_dir, train, out, "--hp_search", 3, "--hp_search_prune", "false",
                     "--layer_decay", 0.9, "--test_file", train)
    metrics = run_text(argv)

    results = json.loads((out / "hp_search.json").read_text())
    trials = results["per_trial"]
    assert [t["trial"] for t in trials] == [0, 1, 2] and all(t["state"] == "complete" for t in trials)
    assert trials[0]["params"] == {"learning_rate": 2e-3, "head_learning_rate": 2e-3, "layer_decay": 0.9,
                                   "warmup_steps": 0.1, "num_train_epochs": 2}  # the run's own values first
    assert len({json.dumps(t["params"], sort_keys=True) for t in trials}) == 3
    # a fresh model per trial and for the final one, each prepared and grouped with its own values
    assert len(built) == 4 and len({id(c["model"]) for c in built}) == 4
    for call, t in zip(built, trials):
        assert (call["lr"], call["head_lr"], call["layer_decay"]) == pytest.approx(
            (t["params"]["learning_rate"], t["params"]["head_learning_rate"], t["params"]["layer_decay"]))
    for t in trials:  # each trial trained for its own epochs and was scored on the validation split
        state = json.loads((out / "hp_search" / f"trial-{t['trial']}" / "trainer_state.json").read_text())
        assert state["num_train_epochs"] == t["params"]["num_train_epochs"]
        assert t["value"] == [e for e in state["log_history"] if "eval_accuracy" in e][-1]["eval_accuracy"]
    best = max(trials, key=lambda t: (t["value"], -t["trial"]))
    assert results["best"]["trial"] == best["trial"]
    final = built[-1]
    assert (final["lr"], final["head_lr"], final["layer_decay"]) == pytest.approx(
        (best["params"]["learning_rate"], best["params"]["head_learning_rate"], best["params"]["layer_decay"]))
    assert "test_accuracy" in metrics

    # config.yaml: the final model's configuration, which parses back to the best values and no search
    reparsed = parse_args(TEXT, ["--config", str(out / "config.yaml")])
    ft, args = reparsed[2], reparsed[3]
    assert (ft.hp_search, ft.hp_space, ft.layer_decay, ft.head_learning_rate) == (
        0, None, best["params"]["layer_decay"], best["params"]["head_learning_rate"])
    assert (args.learning_rate, args.warmup_steps, args.num_train_epochs) == (
        best["params"]["learning_rate"], best["params"]["warmup_steps"], best["params"]["num_train_epochs"])
    card = (out / "README.md").read_text()
    assert "## Hyperparameter search" in card and f"| {best['trial']} (best) | complete |" in card
    pushed = {p.as_posix() for p in files_to_push(out)}
    assert "hp_search.json" in pushed and not any(p.startswith("hp_search/") for p in pushed)
    assert (out / "hp_search" / "study.journal").is_file() and verify_manifest(out) == []
    assert not list((out / "hp_search").rglob("*.safetensors"))  # no trial keeps a model


class PruneTrialOne(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return trial.number == 1


def test_a_pruned_trial_is_recorded_and_never_chosen(tiny_bert_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(optuna.pruners, "MedianPruner", lambda **kwargs: PruneTrialOne())
    train = write_csv(tmp_path / "train.csv", text_rows())
    out = tmp_path / "out"
    run_text(text_argv(tiny_bert_dir, train, out, "--hp_search", 3, "--eval_strategy", "epoch"))
    results = json.loads((out / "hp_search.json").read_text())
    states = {t["trial"]: t["state"] for t in results["per_trial"]}
    assert states == {0: "complete", 1: "pruned", 2: "complete"}
    pruned = results["per_trial"][1]
    assert pruned["value"] is None and pruned["last_reported"] is not None and results["best"]["trial"] != 1
    state = json.loads((out / "hp_search" / "trial-1" / "trainer_state.json").read_text())
    assert state["global_step"] < state["max_steps"]  # stopped at its first evaluation


class MachineGone(Exception):
    pass


def test_a_search_cut_off_by_a_crash_continues_where_it_stopped(tiny_bert_dir, tmp_path, monkeypatch):
    train = write_csv(tmp_path / "train.csv", text_rows())
    out = tmp_path / "out"
    argv = text_argv(tiny_bert_dir, train, out, "--hp_search", 3, "--hp_search_prune", "false")
    real = hp.run_trial
    started: list[int] = []
    crashed: list[int] = []

    def crash_in_trial_two(trial, **kwargs):
        started.append(trial.number)
        if trial.number == 2 and not crashed:
            crashed.append(trial.number)
            raise MachineGone  # the machine went away mid-trial
        return real(trial, **kwargs)

    monkeypatch.setattr(hp, "run_trial", crash_in_trial_two)
    with pytest.raises(MachineGone):
        run_text(argv)
    assert not (out / "model.safetensors").exists()
    first = {t.number: t.params for t in load_study(out).trials if t.state.name == "COMPLETE"}
    assert sorted(first) == [0, 1]

    # another space or another configuration for the same study is refused, naming the change
    changed = argv + ["--hp_space", '{"layer_decay": null}']
    with pytest.raises(ValueError, match=r"holds a search made with a different setup: the space of layer_decay "
                                         r"\(0.65 to 1 \(uniform\) then, not searched now\)"):
        run_text(changed)
    with pytest.raises(ValueError, match=r"different setup: the space of learning_rate .*; learning_rate \(0.002 then, 0.001 now\)"):
        run_text(argv + ["--learning_rate", "1e-3"])

    run_text(argv)  # the same command again
    assert started == [0, 1, 2, 3]  # trials 0 and 1 kept, the cut-off one run again as trial 3
    results = json.loads((out / "hp_search.json").read_text())
    assert [t["trial"] for t in results["per_trial"]] == [0, 1, 3]
    assert {t["trial"]: t["params"] for t in results["per_trial"][:2]} == first
    assert (out / "model.safetensors").is_file() and verify_manifest(out) == []

    # a finished output: --overwrite_output_dir starts the search over
    with pytest.raises(ValueError, match="already holds a finished model"):
        run_text(changed)
    started.clear()
    run_text(changed + ["--overwrite_output_dir", "true"])
    assert started == [0, 1, 2]
    assert "layer_decay" not in json.loads((out / "hp_search.json").read_text())["space"]


def load_study(out):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(out / "hp_search" / "study.journal")))
    return optuna.load_study(study_name=hp.STUDY_NAME, storage=storage)


@pytest.mark.slow  # fast: the text recipe's search above, the same code path
def test_token_and_image_recipes_search_too(tiny_bert_dir, tiny_vit_dir, tmp_path):
    words = [("John", "B-PER"), ("Mary", "B-PER"), ("Paris", "B-LOC"), ("Berlin", "B-LOC")]
    rows = [{"tokens": [words[i % 4][0], "met", words[(i + 1) % 4][0]], "tags": [words[i % 4][1], "O",
                                                                                 words[(i + 1) % 4][1]]}
            for i in range(20)]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["--use_cpu", "true", "--num_train_epochs", "1", "--save_strategy", "no", "--disable_tqdm", "true",
              "--dataloader_pin_memory", "false", "--validation_split_percentage", "20", "--hp_search", "2",
              "--hp_space", '{"num_train_epochs": null}']
    argv = ["--model_name_or_path", str(tiny_bert_dir), "--train_file", str(train), "--output_dir",
            str(tmp_path / "tokens"), "--per_device_train_batch_size", "8", *common]
    token_cls.main(*parse_args((ModelArguments, TokenDataArguments, FineTuneArguments, TrainingArguments), argv,
                               defaults=token_cls.RECIPE_DEFAULTS))
    results = json.loads((tmp_path / "tokens" / "hp_search.json").read_text())
    assert results["metric"] == "eval_f1" and len(results["per_trial"]) == 2

    images = []
    for i in range(12):
        colour, label = ((220, 40, 40), "red") if i % 2 else ((40, 60, 220), "blue")
        Image.new("RGB", (20, 20), colour).save(tmp_path / f"img{i}.png")
        images.append({"image": f"img{i}.png", "label": label})
    argv = ["--model_name_or_path", str(tiny_vit_dir), "--train_file", str(write_csv(tmp_path / "images.csv", images)),
            "--output_dir", str(tmp_path / "images"), "--per_device_train_batch_size", "4",
            "--dataloader_num_workers", "0", *common]
    image_cls.main(*parse_args((ModelArguments, ImageDataArguments, FineTuneArguments, TrainingArguments), argv,
                               defaults=image_cls.RECIPE_DEFAULTS))
    results = json.loads((tmp_path / "images" / "hp_search.json").read_text())
    assert results["metric"] == "eval_accuracy" and len(results["per_trial"]) == 2
    assert "num_train_epochs" not in results["space"] and (tmp_path / "images" / "model.safetensors").is_file()



def test_a_notebook_search_with_its_own_trainer_function(core_bert_dir, core_data, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from ftlib import FtTrainer, prepare_model, search_hyperparameters

    def build(args, data, ft_args):
        model, anatomy = prepare_model(AutoModelForSequenceClassification.from_pretrained(core_bert_dir), ft_args)
        return FtTrainer(model=model, args=args, ft_args=ft_args, anatomy=anatomy, train_dataset=data,
                         eval_dataset=core_data(8, seed=1))

    args = TrainingArguments(str(tmp_path / "out"), use_cpu=True, report_to="none", max_steps=4, learning_rate=1e-3,
                             per_device_train_batch_size=4, eval_strategy="steps", eval_steps=2, save_strategy="no",
                             disable_tqdm=True)
    ft = FineTuneArguments(hp_search=3, layer_decay=0.9)
    best = search_hyperparameters(build, args, ft, core_data(16))
    results = json.loads((tmp_path / "out" / "hp_search.json").read_text())
    # no metric_for_best_model: the evaluation loss, lower is better; --max_steps: epochs not searched
    assert (results["metric"], results["direction"]) == ("eval_loss", "minimize")
    assert "num_train_epochs" not in results["space"] and len(results["per_trial"]) == 3
    assert best == results["best"]["params"]
    assert (args.learning_rate, ft.layer_decay, ft.head_learning_rate) == (
        best["learning_rate"], best["layer_decay"], best["head_learning_rate"])


def test_the_final_training_resumes_after_a_finished_search(tiny_bert_dir, tmp_path, monkeypatch):
    """Killed during the final training: the same command again runs no trial, takes the best values from the
    study, finds them equal to the checkpoint's config.yaml, and resumes from the checkpoint."""
    import ftlib.run.steps

    train = write_csv(tmp_path / "train.csv", text_rows())
    out = tmp_path / "out"
    argv = text_argv(tiny_bert_dir, train, out, "--hp_search", 2, "--hp_search_prune", "false",
                     "--save_strategy", "steps", "--save_steps", 2)
    real_step, real_train, real_trial = ftlib.training.trainer.FtTrainer.training_step, ftlib.run.steps.train, hp.run_trial
    trials, resumed_from = [], []

    def crash_in_the_final_training(self, model, inputs, num_items_in_batch=None):
        if self.args.output_dir == str(out) and self.state.global_step == 3:
            raise MachineGone
        return real_step(self, model, inputs, num_items_in_batch)

    monkeypatch.setattr(ftlib.training.trainer.FtTrainer, "training_step", crash_in_the_final_training)
    monkeypatch.setattr(ftlib.run.steps, "train", lambda trainer, resume, config: resumed_from.append(resume)
                        or real_train(trainer, resume, config))
    monkeypatch.setattr(hp, "run_trial", lambda trial, **kw: trials.append(trial.number) or real_trial(trial, **kw))
    with pytest.raises(MachineGone):
        run_text(argv)
    assert trials == [0, 1] and (out / "checkpoint-2" / "config.yaml").is_file()
    assert (out / "checkpoint-2" / "config.yaml").read_text() == (out / "config.yaml").read_text()

    monkeypatch.setattr(ftlib.training.trainer.FtTrainer, "training_step", real_step)
    run_text(argv)
    assert trials == [0, 1] and resumed_from == [None, str(out / "checkpoint-2")]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == state["max_steps"] and verify_manifest(out) == []
