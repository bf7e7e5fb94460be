"""Hyperparameter search (``--hp_search N``): N trials with Optuna, each a fresh model trained with the run's
whole strategy, scored on the validation split; the final model then trains with the best trial's values.

Every trial is built by the recipe's own trainer function (the one cross-validation folds use, :mod:`ftlib.run.cv`):
the model is loaded, prepared (LoRA, freezing, re-initialised blocks) and grouped (layer-wise learning rates,
gradual unfreezing, the step budget, class weights) with the trial's values. ``Trainer.hyperparameter_search``
cannot do that: it keeps one trainer for all trials and sets only ``TrainingArguments`` fields, while the layer
decay and the head's learning rate are ftlib's, and the budget, callbacks and parameter groups belong to a
trainer. So ftlib drives the Optuna study and hands each trial to Trainer's own hooks (``train(trial=...)``):
Trainer reports every evaluation to the trial and stops a pruned one.

- **Space** (:func:`search_space`): the learning rate and the head's (log scale, a third to three times the run's
  values), the layer decay (0.65-1), warmup (0-20% of the steps) and the epochs (one fewer to two more than the
  run's, from where the step budget ``--min_train_steps`` stops raising them; not with ``--max_steps``). ``--hp_space`` (a YAML mapping in a config, JSON on the command line) narrows,
  widens or extends it: ``name: [low, high]`` (a range: integers when both ends are; log scale for learning
  rates), ``name: {low: .., high: .., log: true|false}``, ``name: {choices: [...]}``, or ``name: null`` (not
  searched: the run's value). Any numeric field of the training or ftlib arguments may be searched.
- **Trials** are seeded: the sampler (TPE) by ``--seed``, and each trial's training by ``--seed`` too, so trials
  differ by their values only. Trial 0 is the run's own values (as far as they lie in the space), so the search
  never ends below the configuration it started from, on the validation split. A trial is pruned (Optuna's median
  rule, ``--hp_search_prune``) when its metric at some quarter of its training is below the median of earlier
  trials at the same quarter: from the fourth trial on, and only in the second half of its training.
- **Resumable**: the study lives in ``hp_search/study.journal`` in the output directory; running the same command
  again continues it (finished and pruned trials count towards N; one cut off by a crash is run again) and, once N
  trials are done, trains the final model. A changed search space or run configuration is refused, naming what
  changed; ``--overwrite_output_dir`` starts the search over.
- **Writes** ``hp_search.json`` (every trial: state, metric, values, duration; the best), ``hp_search/trial-<n>/``
  (each trial's training log), and a table of the trials in the log and the model card. ``config.yaml`` holds the
  final model's configuration: the best values, ``hp_search: 0``, so that ``--config config.yaml`` trains that
  model without searching again.

The validation metric of the final model is the one the search maximised: an optimistic estimate. Judge the
model on a test split (or with ``--cv_folds``, which runs after the search with the best values).
One process only: trials are not distributed (Trainer's Optuna path prunes on the main process alone).
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import logging
import math
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainingArguments, set_seed

from ftlib.run.cli import config_changes
from ftlib.run.cv import fold_args
from ftlib.run.output_dir import check_resume_config, take_output_dir
from ftlib.strategy.small_data import budget_epochs
from ftlib.tasks.metrics import eval_key

logger = logging.getLogger("ftlib")

SEARCH_DIR = "hp_search"
STORAGE_FILE = "study.journal"
RESULTS_FILE = "hp_search.json"
STUDY_NAME = "ftlib"
# fields a search may not vary: where the run writes, what it resumes, the search and the other side runs
NOT_SEARCHABLE = frozenset({
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "allow_config_change", "seed", "data_seed",
    "hp_search", "hp_space", "hp_search_prune", "cv_folds", "cv_only", "lr_find", "lr_find_start", "lr_find_end",
    "lr_find_steps", "local_rank", "push_to_hub", "push_min_metric",
})
# The median rule prunes from the fourth trial on, and only in the second half of a trial's training: early
# evaluations rank trials by their warm-up and schedule more than by where they end (on SST-2, pruning from the third
# trial at the first quarter stopped every trial after the second, the best-ending ones included).
PRUNE_FROM_TRIAL = 3  # trials that finish before the median rule prunes (Optuna's n_startup_trials)
PRUNE_FROM_QUARTER = 2  # quarters of training before a trial can be pruned (Optuna's n_warmup_steps)


@dataclass(frozen=True)
class Param:
    """One searched value: a range (``low``-``high``, log scale or not, integers or not) or ``choices``."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple | None = None

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def contains(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
        if self.integer and value != int(value):
            return False
        return self.low <= value <= self.high

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        kind = "integer" if self.integer else "log scale" if self.log else "uniform"
        return f"{self.low:g} to {self.high:g} ({kind})"


# -- the space ----------------------------------------------------------------------------------------------------
def default_space(training_args: TrainingArguments, ft_args, num_rows: int | None = None,
                  head_trains: bool = True) -> dict[str, Param]:
    """The strategy's space, centred on the run's own values (see the module docstring). ``num_rows``: the training
    rows; with the step budget (``--min_train_steps``) the epochs start where the budget stops raising them, since
    fewer train the same. ``head_trains=False`` (a causal LM's pretrained head under LoRA): no head rate, which
    would change nothing."""
    lr = training_args.learning_rate
    head = ft_args.head_learning_rate or lr
    space = {
        "learning_rate": Param("learning_rate", lr / 3, lr * 3, log=True),
        "head_learning_rate": Param("head_learning_rate", head / 3, head * 3, log=True),
        "layer_decay": Param("layer_decay", 0.65, 1.0),
        "warmup_steps": Param("warmup_steps", 0.0, 0.2),  # below 1: a fraction of the steps
    }
    if not head_trains:
        del space["head_learning_rate"]
    if training_args.max_steps <= 0:
        epochs = max(1, round(training_args.num_train_epochs))
        floor = 1
        if num_rows and ft_args.min_train_steps > 0:
            rows_per_step = (training_args.per_device_train_batch_size * training_args.world_size
                             * training_args.gradient_accumulation_steps)
            floor = int(budget_epochs(num_rows, rows_per_step, 0, ft_args.min_train_steps))
        low = max(1, epochs - 1, floor)
        space["num_train_epochs"] = Param("num_train_epochs", low, max(epochs + 2, low + 2), integer=True)
    return space


def _field_names(ft_args) -> set[str]:
    return {f.name for f in dataclasses.fields(TrainingArguments)} | {f.name for f in dataclasses.fields(ft_args)}


def parse_param(name: str, spec: Any, current: Any) -> Param:
    """One ``--hp_space`` entry as a :class:`Param`; errors name the key and say the accepted forms."""
    forms = "[low, high], {low: .., high: .., log: true|false}, {choices: [...]} or null"
    where = f"--hp_space {name!r}"
    if isinstance(spec, (list, tuple)):
        if len(spec) != 2:
            raise ValueError(f"{where}: a range is [low, high], got {spec!r} (a list of values: {{choices: [...]}})")
        spec = {"low": spec[0], "high": spec[1]}
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected {forms}, got {spec!r}")  # noqa: TRY004 (a bad value, as the rest)
    unknown = set(spec) - {"low", "high", "log", "choices"}
    if unknown:
        raise ValueError(f"{where}: unknown setting {', '.join(sorted(map(repr, unknown)))} (expected {forms})")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
            raise ValueError(f"{where}: choices is a non-empty list, alone, got {spec!r}")
        return Param(name, choices=tuple(choices))
    low, high = (_number(spec.get(end)) for end in ("low", "high"))
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high))
    if not numbers or not low < high:
        raise ValueError(f"{where}: a range needs numbers low < high, got low={low!r}, high={high!r}")
    log = bool(spec.get("log", name.endswith("learning_rate")))
    if log and low <= 0:
        raise ValueError(f"{where}: a log-scale range needs low > 0, got {low!r} (or log: false)")
    integer = isinstance(low, int) and isinstance(high, int) and not isinstance(current, float)
    return Param(name, float(low) if not integer else low, float(high) if not integer else high, log, integer)


def _number(value: Any) -> Any:
    """YAML reads ``1e-5`` (no dot) as a string; argparse takes it as a number elsewhere in a config, so here too."""
    if isinstance(value, str):
        try:
            return int(value) if value.strip().lstrip("+-").isdigit() else float(value)
        except ValueError:
            return value
    return value


def search_space(training_args: TrainingArguments, ft_args, num_rows: int | None = None,
                 head_trains: bool = True) -> dict[str, Param]:
    """:func:`default_space` with ``--hp_space`` applied; every searched value checked against the ftlib arguments'
    own rules (both ends of a range, every choice) before any trial trains."""
    space = default_space(training_args, ft_args, num_rows, head_trains)
    if ft_args.hp_space:
        try:  # JSON (a config's YAML block arrives so, and the command line), or YAML
            given = json.loads(ft_args.hp_space)
        except json.JSONDecodeError:
            try:
                given = yaml.safe_load(ft_args.hp_space)
            except yaml.YAMLError as err:
                raise ValueError(f"--hp_space is not a YAML / JSON mapping: {err}") from None
        if not isinstance(given, dict):
            raise ValueError(f"--hp_space must be a mapping of argument names to ranges, got {given!r}")
        fields = _field_names(ft_args)
        for name, spec in given.items():
            if name not in fields or name in NOT_SEARCHABLE:
                why = "not an argument of this recipe" if name not in fields else "not searchable"
                raise ValueError(f"--hp_space: unknown key {name!r} ({why})")
            if spec is None:
                space.pop(name, None)
                continue
            current = getattr(ft_args, name) if hasattr(ft_args, name) else getattr(training_args, name)
            space[name] = parse_param(name, spec, current)
    if not space:
        raise ValueError("--hp_space leaves nothing to search")
    for param in space.values():
        for value in param.choices or (param.low, param.high):
            try:
                apply_values({param.name: value}, training_args, ft_args)
            except ValueError as err:
                raise ValueError(f"--hp_space {param.name!r}: {value!r} is not a valid value: {err}") from None
    return space


def apply_values(values: dict[str, Any], training_args: TrainingArguments, ft_args):
    """``(training arguments, ftlib arguments)`` with ``values`` set: a shallow copy of the first, a new second
    (its checks run again)."""
    args = copy.copy(training_args)
    ft_values = {k: v for k, v in values.items() if hasattr(ft_args, k)}
    for name, value in values.items():
        if name not in ft_values:
            setattr(args, name, value)
    return args, dataclasses.replace(ft_args, **ft_values) if ft_values else ft_args


# -- the search ---------------------------------------------------------------------------------------------------
def search_hyperparameters(build: Callable, training_args: TrainingArguments, ft_args, train,
                           run=None, head_trains: bool = True) -> dict[str, Any] | None:
    """Run ``--hp_search`` (nothing without it) and return the best trial's values, which are then set in place on
    ``training_args`` and ``ft_args`` (so that what follows, ``build`` included, trains with them).
    ``build(args, train, ft_args=...)``: a fresh model with the strategy and its :class:`~ftlib.training.trainer.FtTrainer`
    (a recipe's trainer function, as for :mod:`ftlib.run.cv`); ``train``: the training data. ``run``: a recipe's
    :class:`ftlib.run.steps.RunStart`, whose ``config`` (and so ``config.yaml``) becomes the final model's configuration
    and guards a continued study; without it (a notebook) the study is checked against the space and metric only.
    ``head_trains=False``: the model's head is frozen (a causal LM's under LoRA), so its rate is not searched.

        ft = FineTuneArguments(layer_decay=0.9, hp_search=8)
        best = search_hyperparameters(lambda args, data, ft_args: FtTrainer(model=..., args=args, ft_args=ft_args,
                                                                            train_dataset=data, ...), args, ft, train)
    """
    if not ft_args.hp_search:
        return None
    optuna = _import_optuna()

    if training_args.world_size > 1:
        raise ValueError(f"--hp_search runs its trials in one process; this run has {training_args.world_size}. "
                         "Search with `python recipes/...` (one device), then train the final model on many with "
                         "--config <output_dir>/config.yaml")
    space = search_space(training_args, ft_args, len(train), head_trains)
    metric = eval_key(training_args.metric_for_best_model or "loss")
    greater = training_args.greater_is_better if training_args.greater_is_better is not None else metric != "eval_loss"
    output_dir = Path(training_args.output_dir)
    folder = output_dir / SEARCH_DIR
    config = run.config if run is not None else ""
    output_dir.mkdir(parents=True, exist_ok=True)  # a recipe's is there already (ftlib.run.steps.start_run)
    take_output_dir(output_dir, config)
    if ft_args.overwrite_output_dir:
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    study = open_study(optuna, folder / STORAGE_FILE, space, metric, greater, training_args, ft_args, config)
    done = finished_trials(optuna, study)
    remaining = max(0, ft_args.hp_search - len(done))
    logger.info("hyperparameter search: %d trials (%d done before), %s on the validation split; space: %s",
                ft_args.hp_search, len(done), metric, "; ".join(f"{p.name} {p.describe()}" for p in space.values()))
    objective = partial(run_trial, build=build, training_args=training_args, ft_args=ft_args, train=train,
                        space=space, metric=metric, folder=folder)
    if remaining:
        study.optimize(objective, n_trials=remaining, gc_after_trial=True)
    trials = finished_trials(optuna, study)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RuntimeError(f"--hp_search: none of the {len(trials)} trials finished (all were pruned); see "
                           f"{folder}")
    best = study.best_trial
    results = write_results(output_dir, study, trials, space, metric, greater, training_args.seed, ft_args.hp_search)
    print(f"hyperparameter search, {len(trials)} trials ({metric} on the validation split, "
          f"{'higher' if greater else 'lower'} is better):\n{format_table(results)}", flush=True)

    apply_values(best.params, training_args, ft_args)  # the ftlib values together pass their checks
    for name, value in best.params.items():
        setattr(ft_args if hasattr(ft_args, name) else training_args, name, value)
    if run is not None:
        run.config = final_config(run.config, best.params)
        if run.resume_from is not None:  # deferred by start_run: the final model's configuration is known only now
            check_resume_config(run.resume_from, run.config, ft_args.allow_config_change)
        take_output_dir(output_dir, run.config)
    set_seed(training_args.seed)  # the final model starts from the state it has without a search
    logger.info("hyperparameter search: best trial %d (%s %.4f): %s", best.number, metric, best.value,
                ", ".join(f"{k}={_short(v)}" for k, v in best.params.items()))
    return best.params


def _import_optuna():
    try:
        import optuna
    except ImportError:
        raise ImportError("--hp_search needs Optuna: pip install 'ftlib[search]' (or pip install optuna)") from None
    return optuna


def open_study(optuna, path: Path, space: dict[str, Param], metric: str, greater: bool, training_args, ft_args,
               config: str):
    """The study in ``path`` (created, or loaded to continue it); refuses one made for another search."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend


    storage = JournalStorage(JournalFileBackend(str(path)))
    n = ft_args.hp_search
    sampler = optuna.samplers.TPESampler(seed=training_args.seed, n_startup_trials=min(10, max(3, n // 2)))
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=PRUNE_FROM_TRIAL, n_warmup_steps=PRUNE_FROM_QUARTER)
              if ft_args.hp_search_prune else optuna.pruners.NopPruner())
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, sampler=sampler, pruner=pruner,
                                direction="maximize" if greater else "minimize", load_if_exists=True)
    described = {p.name: p.describe() for p in space.values()}
    search_config = searched_config(config)
    if study.user_attrs:
        before = study.user_attrs
        changes = []
        then = before.get("space", {})
        for name in dict.fromkeys([*then, *described]):
            if then.get(name) != described.get(name):
                changes.append(f"the space of {name} ({then.get(name, 'not searched')} then, "
                               f"{described.get(name, 'not searched')} now)")
        if before.get("metric") != metric:
            changes.append(f"the metric ({before.get('metric')} then, {metric} now)")
        changed = config_changes(before.get("config", ""), search_config)
        changes += [f"{k} ({old!r} then, {new!r} now)" for k, (old, new) in changed.items()]
        if changes and not ft_args.overwrite_output_dir:
            raise ValueError(f"{path} holds a search made with a different setup: {'; '.join(changes)}. Continue it "
                             "with the same configuration, or start over with --overwrite_output_dir true")
    else:
        study.set_user_attr("space", described)
        study.set_user_attr("metric", metric)
        study.set_user_attr("config", search_config)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)  # cut off by a crash: run again
        logger.warning("hyperparameter search: trial %d did not finish in an earlier run; it is run again",
                       trial.number)
    if not study.trials:  # trial 0: the run's own values, where the space holds them
        study.enqueue_trial(start_values(space, training_args, ft_args))
    return study


def start_values(space: dict[str, Param], training_args: TrainingArguments, ft_args) -> dict[str, Any]:
    """The run's own values of the searched names that lie in the space (the head's rate: the body's when unset;
    the epochs also below the space, where the step budget raises them to its floor)."""
    start = {}
    for param in space.values():
        owner = ft_args if hasattr(ft_args, param.name) else training_args
        current = getattr(owner, param.name)
        if param.name == "head_learning_rate" and current is None:
            current = training_args.learning_rate
        # epochs below the space train as the budget's floor but evaluate and save at other points (the planned
        # count): the run's own value, not the floor, repeats the run, its evaluations and best checkpoint included
        below_budget = param.name == "num_train_epochs" and param.integer and current < param.low
        if param.contains(current) or below_budget:
            start[param.name] = int(current) if param.integer else current
    return start


def searched_config(config: str) -> str:
    """The run's configuration without the keys that may change while a search continues (N may grow)."""
    values = yaml.safe_load(config) or {}
    for key in ("hp_search", "overwrite_output_dir"):
        values.pop(key, None)
    return yaml.safe_dump(values, sort_keys=False)


def finished_trials(optuna, study) -> list:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(deepcopy=False, states=states)


def run_trial(trial, *, build, training_args, ft_args, train, space: dict[str, Param], metric: str,
              folder: Path) -> float:
    """One trial: the trial's values on a fresh trainer (in ``hp_search/trial-<n>/``, no model kept), trained with
    Trainer's trial hooks (each evaluation reported; a pruned trial stops there), then scored on the validation
    split as the final model would be."""
    from transformers.trainer_utils import HPSearchBackend


    with warnings.catch_warnings():  # trial 0's epochs may lie below the budget's floor (start_values)
        warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")
        values = {name: param.suggest(trial) for name, param in space.items()}
    args, trial_ft = apply_values(values, training_args, ft_args)
    trial_dir = folder / f"trial-{trial.number}"
    shutil.rmtree(trial_dir, ignore_errors=True)
    trial_dir.mkdir(parents=True)
    args = fold_args(args, trial_dir)
    logger.info("hyperparameter search, trial %d: %s", trial.number,
                ", ".join(f"{k}={_short(v)}" for k, v in values.items()))
    set_seed(training_args.seed)  # every trial starts from the same initial state: only its values differ
    trainer = build(args, train, ft_args=trial_ft)
    trainer.hp_search_backend = HPSearchBackend.OPTUNA
    trainer.hp_space = lambda _: {}  # the values are in the trainer already, model and optimizer groups included
    trainer.hp_name = lambda _: ""  # checkpoints (--load_best_model_at_end) in the trial's folder
    trainer.compute_objective = partial(objective_value, metric=metric)
    try:
        trainer.train(trial=trial)
        metrics = trainer.evaluate()
        trainer.save_metrics("eval", metrics)
        return objective_value(metrics, metric)
    finally:
        trainer.save_state()
        for checkpoint in trial_dir.glob("checkpoint-*"):
            shutil.rmtree(checkpoint, ignore_errors=True)
        trainer.model_wrapped = trainer.model = None
        del trainer
        gc.collect()


def objective_value(metrics: dict[str, float], metric: str) -> float:
    if metric not in metrics:
        raise ValueError(f"--hp_search: no {metric!r} among the evaluation results ({', '.join(sorted(metrics))}); "
                         "set --metric_for_best_model to one of them")
    return float(metrics[metric])


# -- results ------------------------------------------------------------------------------------------------------
def write_results(output_dir: Path, study, trials, space, metric: str, greater: bool, seed: int, n: int) -> dict:
    best = study.best_trial
    document = {
        "trials": n,
        "metric": metric,
        "direction": "maximize" if greater else "minimize",
        "seed": seed,
        "space": {p.name: p.describe() for p in space.values()},
        "best": {"trial": best.number, "value": best.value, "params": best.params},
        "per_trial": [
            {"trial": t.number, "state": t.state.name.lower(), "value": t.value if t.state.name == "COMPLETE" else None,
             "last_reported": (t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None),
             "params": t.params,
             "seconds": round((t.datetime_complete - t.datetime_start).total_seconds(), 1)
             if t.datetime_complete and t.datetime_start else None}
            for t in sorted(trials, key=lambda t: t.number)
        ],
        "storage": f"{SEARCH_DIR}/{STORAGE_FILE}",
        "note": "trial 0: the run's own values; every trial trained with --seed; value: the validation metric after "
                "training (pruned trials: none; last_reported: the last evaluation before the stop, in brackets in "
                "the table)",
    }
    (output_dir / RESULTS_FILE).write_text(json.dumps(document, indent=1) + "\n")
    return document


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def format_table(results: dict, markdown: bool = False) -> str:
    """The trials, one a row: state, the metric, the values (the best trial marked)."""
    names = list(results["space"])
    best = results["best"]["trial"]
    rows = [["trial", "state", results["metric"], *names, "seconds"]]
    for t in results["per_trial"]:
        value = f"{t['value']:.4f}" if t["value"] is not None else (
            f"({t['last_reported']:.4f})" if t["last_reported"] is not None else "")  # pruned: its last report
        mark = " (best)" if t["trial"] == best else ""
        rows.append([f"{t['trial']}{mark}", t["state"], value, *(_short(t["params"].get(n, "")) for n in names),
                     "" if t["seconds"] is None else f"{t['seconds']:.0f}"])
    if markdown:
        lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)


def final_config(config: str, best: dict[str, Any]) -> str:
    """The final model's ``config.yaml``: the run's configuration with the best trial's values, and no search."""
    values = yaml.safe_load(config) or {}
    n = values.get("hp_search")
    values.update(best)
    values["hp_search"] = 0
    values["hp_space"] = None
    values["hp_search_prune"] = True
    header = "".join(line + "\n" for line in config.splitlines() if line.startswith("#"))
    header += (f"# The best of --hp_search {n} trials (hp_search.json): {', '.join(best)}. hp_search is 0\n"
               "# here, so that --config config.yaml trains this model without searching again.\n")
    return header + yaml.safe_dump(values, sort_keys=False, allow_unicode=True)


def card_section(output_dir: str | Path) -> list[str]:
    """The model card's lines on the search (none without ``hp_search.json``)."""
    path = Path(output_dir) / RESULTS_FILE
    if not path.is_file():
        return []
    results = json.loads(path.read_text())
    best = results["best"]
    about = (f"{len(results['per_trial'])} trials (Optuna, TPE, seed {results['seed']}), each a fresh model trained "
             f"with the strategy below; {results['metric']} on the validation split ({results['direction']}). The "
             f"final model trained with trial {best['trial']}'s values (the strategy table shows them). Trial 0 is the "
             "starting configuration. The validation figures chose the model: the test split is the unbiased one.")
    return [
        "## Hyperparameter search", "", about, "",
        format_table(results, markdown=True), "",
    ]
