"""The private parts of transformers that ftlib relies on, where transformers offers no public hook: each must still
exist in the installed release, take the parameters ftlib passes or reads, and still be called where ftlib expects
it to be (a renamed caller would leave an override silently unused). A failure names the method; pyproject.toml pins
the transformers releases these tests passed on."""

from __future__ import annotations

import inspect

import pytest
from transformers import PreTrainedModel, Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler

from ftlib.training.trainer import EpochSeededLengthGroupedSampler, FtTrainer

# (owner, name) -> the parameter names ftlib expects (self first), the owner's methods that must call it, and who uses it
PRIVATE = {
    (Trainer, "_run_epoch"): (
        ["self", "model", "epoch", "train_dataloader", "steps_in_epoch", "num_update_steps_per_epoch", "trial",
         "ignore_keys_for_eval", "start_time", "resume_from_checkpoint", "epochs_trained",
         "steps_trained_in_current_epoch"],
        ["_inner_training_loop"],
        "FtTrainer._run_epoch: no step past max_steps when resumed at the end",
    ),
    (Trainer, "_get_train_sampler"): (
        ["self", "train_dataset"], ["get_train_dataloader"],
        "FtTrainer._get_train_sampler: the length-grouped order seeded per epoch",
    ),
    (Trainer, "_get_eval_sampler"): (
        ["self", "eval_dataset"], ["get_eval_dataloader", "get_test_dataloader"],
        "FtTrainer._get_eval_sampler: evaluation in dataset order",
    ),
    (Trainer, "_report_to_hp_search"): (
        ["self", "trial", "step", "metrics"], ["_evaluate"],
        "FtTrainer._report_to_hp_search: each evaluation reported at its quarter of training",
    ),
    (Trainer, "_save"): (
        ["self", "output_dir", "state_dict"], [],
        "ftlib.run.steps.save_model: the gathered state dict written as Trainer.save_model writes it",
    ),
    (Trainer, "_load_from_checkpoint"): (
        ["self", "resume_from_checkpoint", "model"], ["train"],
        "FtTrainer._load_from_checkpoint: weights saved under renamed keys (DINOv2) restored on resume",
    ),
    (Trainer, "_load_best_model"): (
        ["self"], ["_finalize_training"],
        "FtTrainer._load_best_model: weights saved under renamed keys (DINOv2) restored with the best model",
    ),
    (PreTrainedModel, "_init_weights"): (
        ["self", "module"], [],
        "ftlib.strategy.small_data.reinit_top_blocks: the model's own initialisation",
    ),
}


def parameter_names(function) -> list[str]:
    return list(inspect.signature(function).parameters)


@pytest.mark.parametrize("owner, name", list(PRIVATE), ids=[f"{owner.__name__}.{name}" for owner, name in PRIVATE])
def test_private_method_is_there_with_the_expected_parameters(owner, name):
    expected, callers, user = PRIVATE[(owner, name)]
    method = getattr(owner, name, None)
    assert callable(method), f"{owner.__name__}.{name} is gone from this transformers release (used by {user})"
    assert parameter_names(method) == expected, (
        f"{owner.__name__}.{name} now takes {parameter_names(method)}, ftlib expects {expected} (used by {user})"
    )
    for caller in callers:
        assert f"self.{name}" in inspect.getsource(getattr(owner, caller)), (
            f"{owner.__name__}.{caller} no longer calls {name}: {user} would be silently skipped"
        )


def test_ftlib_overrides_only_the_private_methods_checked_here():
    """A new override of a private Trainer method comes with its entry above."""
    checked = {name for owner, name in PRIVATE if owner is Trainer}
    overridden = {name for name in vars(FtTrainer) if name.startswith("_") and not name.startswith("__")
                  and hasattr(Trainer, name)}
    assert overridden <= checked, f"private Trainer methods overridden without a contract test: {overridden - checked}"
    for name in overridden:  # the override takes what Trainer passes (by name or through *args / **kwargs)
        ours = inspect.signature(getattr(FtTrainer, name)).parameters.values()
        if not any(p.kind is p.VAR_KEYWORD for p in ours):
            assert [p.name for p in ours] == PRIVATE[(Trainer, name)][0], name


def test_length_grouped_sampler_takes_a_generator_that_it_shuffles_with():
    """EpochSeededLengthGroupedSampler sets ``generator`` before each pass of Trainer's LengthGroupedSampler."""
    assert parameter_names(LengthGroupedSampler.__init__) == [
        "self", "batch_size", "dataset", "lengths", "model_input_name", "generator"]
    orders = []
    for _ in range(2):
        sampler = EpochSeededLengthGroupedSampler(2, lengths=list(range(1, 33)), seed=7)
        orders.append([list(sampler), list(sampler)])  # epoch 0, then epoch 1
    assert orders[0] == orders[1]  # the order is the seed's and the epoch's
    assert orders[0][0] != orders[0][1] and sorted(orders[0][0]) == list(range(32))
