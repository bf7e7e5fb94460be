"""The Trainer wiring: model strategy, optimizer from parameter groups, class-weighted loss, callbacks.

``FtTrainer`` is a ``transformers.Trainer`` that changes only what the strategy needs: where the
optimizer's parameters and learning rates come from, the loss when class weights or soft (mixup)
labels are in play, a stop on a non-finite loss, and gradient sync for blocks unfrozen after the
model was wrapped for DDP. Everything else (schedulers, checkpoints, resume, logging, Hub) is
Trainer's own.

Where transformers has no public hook for a change (no callback can skip an epoch's first step, choose the
samplers or change what a search trial is told), ``FtTrainer`` overrides a private Trainer method:
``_run_epoch``, ``_get_train_sampler``, ``_get_eval_sampler`` and ``_report_to_hp_search``.
tests/test_transformers_contract.py checks that the installed transformers still has and calls each of them with
the parameters used here, and pyproject.toml pins the transformers releases those tests passed on.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import tempfile
from collections.abc import Mapping
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import DistributedType
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from torch.utils.data import SequentialSampler
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, get_last_checkpoint, has_length

from ftlib.strategy.anatomy import Anatomy, find_anatomy
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.strategy.freezing import apply_freezing, count_parameters
from ftlib.strategy.lora import apply_lora
from ftlib.strategy.optim import build_param_groups, create_optimizer, format_group_table, resolve_optimizer
from ftlib.strategy.small_data import (
    WeightAveragingCallback,
    budget_epochs,
    probe_settings,
    reinit_top_blocks,
    set_batch_norm,
)
from ftlib.strategy.unfreeze import GradualUnfreezeCallback, staged_parameters
from ftlib.training.tracking import (
    ConsoleView,
    GroupLearningRateCallback,
    class_names,
    group_key,
    use_console_view,
)

logger = logging.getLogger(__name__)


def prepare_model(model: nn.Module, ft_args: FineTuneArguments, task_type: str | None = None,
                  trainable_token_indices: list[int] | None = None):
    """Find the anatomy, wrap with LoRA when asked, apply the freezing flags. Returns ``(model, anatomy)``.

    ``task_type``: peft's (``"SEQ_CLS"``, ``"CAUSAL_LM"`` ...). ``trainable_token_indices``: with LoRA, the rows of
    tokens added to the vocabulary, which train (:func:`ftlib.training.decoder.new_token_training`)."""
    anatomy = find_anatomy(model, ft_args.blocks_pattern)
    reinit_top_blocks(model, anatomy, ft_args.reinit_top_blocks)
    batch_norm_layers = set_batch_norm(model, ft_args.batch_norm, ft_args.batch_norm_momentum, anatomy)
    if batch_norm_layers and (ft_args.batch_norm != "train" or ft_args.batch_norm_momentum is not None):
        logger.info("batch norm: %d layers %s%s", batch_norm_layers, ft_args.batch_norm,
                    "" if ft_args.batch_norm_momentum is None else f", momentum {ft_args.batch_norm_momentum:g}")
    if ft_args.lora:
        model = apply_lora(
            model,
            anatomy,
            r=ft_args.lora_r,
            alpha=ft_args.lora_alpha,
            dropout=ft_args.lora_dropout,
            target_modules=ft_args.lora_target_modules,
            task_type=task_type,
            use_rslora=ft_args.lora_use_rslora,
            use_dora=ft_args.lora_use_dora,
            trainable_token_indices=trainable_token_indices,
        )
    apply_freezing(model, anatomy, ft_args)
    trainable, total = count_parameters(model)
    logger.info("trainable parameters: %s of %s (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    return model, anatomy


def class_weights_from_labels(
    spec: str | None, labels, num_labels: int, multi_label: bool = False, regression: bool = False
):
    """Per-class loss weights: ``"balanced"`` from the training labels (positive weights for multi-label),
    or explicit comma-separated numbers, one per label. A regression task has no classes: weights are an error."""
    if spec is None:
        return None
    if regression:
        raise ValueError(f"--class_weights {spec}: the labels are numbers (regression), there are no classes to weight")
    if spec != "balanced":
        weights = [float(w) for w in spec.split(",")]
        if len(weights) != num_labels:
            raise ValueError(f"--class_weights has {len(weights)} values but there are {num_labels} labels")
        return torch.tensor(weights, dtype=torch.float32)
    if multi_label:
        matrix = np.asarray(labels, dtype=np.float64)
        positives = matrix.sum(axis=0)
        if (positives == 0).any():
            missing = [int(i) for i in np.flatnonzero(positives == 0)]
            raise ValueError(f"--class_weights balanced: label ids {missing} never occur in the training data")
        return torch.tensor((len(matrix) - positives) / positives, dtype=torch.float32)
    labels = np.asarray(labels)
    present = np.unique(labels)
    if len(present) != num_labels:
        missing = sorted(set(range(num_labels)) - set(present.tolist()))
        raise ValueError(f"--class_weights balanced: label ids {missing} never occur in the training data")
    return torch.tensor(compute_class_weight("balanced", classes=present, y=labels), dtype=torch.float32)


def labelled_tokens_per_batch(labels, batch_size: int, class_weights=None) -> float:
    """The mean (class-weighted) count of labelled tokens in a training batch of ``batch_size`` rows: the constant
    that ``FtTrainer(token_loss_normalizer=...)`` divides each batch's summed token loss by. ``labels`` holds one
    row of label ids per training row (``IGNORE_INDEX`` -100 where nothing is learnt)."""
    counts = np.bincount([i for row in labels for i in row if i != -100])
    if not len(labels) or not counts.sum():
        raise ValueError("no labelled token in the training data")
    weights = np.ones(len(counts)) if class_weights is None else np.asarray(class_weights, dtype=np.float64)[: len(counts)]
    return float((counts * weights).sum() / len(labels) * batch_size)


MULTI_LABEL = "multi_label_classification"


def ftlib_loss_kind(labels, problem_type: str | None, class_weights: bool, per_token: bool) -> str | None:
    """Which loss :meth:`FtTrainer.compute_loss` computes itself for a batch with these ``labels``: ``"per_token"``
    (a token batch's summed loss over a constant, ``token_loss_normalizer``), ``"weighted"`` (class weights, or
    soft mixup / cutmix targets, which the models' own losses reject), or None: the model's own loss."""
    if not isinstance(labels, torch.Tensor):  # none, or one target per image (detection): the model's own loss
        return None
    soft = labels.is_floating_point() and labels.dim() == 2 and problem_type != MULTI_LABEL
    if per_token and not labels.is_floating_point() and labels.dim() == 2:
        return "per_token"
    return "weighted" if class_weights or soft else None


def loss_sum(logits: torch.Tensor, labels: torch.Tensor, problem_type: str | None, weights=None) -> torch.Tensor:
    """A batch's summed (class-weighted) loss: divided by :func:`loss_normaliser` it is the batch's mean; the sums
    and normalisers of several micro-batches (and processes) add up to those of the whole batch.

    Hard labels (class ids, -100 skipped): ``sum w[y] * nll``. Soft labels (class probabilities, mixup / cutmix):
    ``sum_i sum_c w_c * y_ic * -log p_ic``. Multi-label (0/1 per label; ``weights`` weigh the positives):
    binary cross-entropy summed over rows and labels."""
    if problem_type == MULTI_LABEL:
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), pos_weight=weights, reduction="sum")
    if labels.is_floating_point():
        return F.cross_entropy(logits, labels.to(logits.dtype), weight=weights, reduction="sum")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), weight=weights, reduction="sum")


def loss_normaliser(labels: torch.Tensor, problem_type: str | None, weights=None) -> torch.Tensor:
    """What :func:`loss_sum` is divided by for a mean: the labels' summed class weight. Hard labels: ``sum w[y]``
    (the count without weights; torch's weighted mean). Soft labels: ``sum_i sum_c w_c * y_ic``, the same for a
    one-hot target as for its class id (torch's own soft cross-entropy divides by the row count whatever the
    weights). Multi-label: rows x labels, torch's mean with ``pos_weight``."""
    if problem_type == MULTI_LABEL:
        return torch.tensor(float(labels.numel()), device=labels.device)
    if labels.is_floating_point():
        targets = labels.float()
        return (targets if weights is None else targets * weights.to(targets.device, targets.dtype)).sum()
    ids = labels.reshape(-1)
    ids = ids[ids != -100]
    if weights is None:
        return torch.tensor(float(ids.numel()), device=labels.device)
    return weights.to(labels.device, torch.float32)[ids].sum()


def check_strategy_args(training_args: TrainingArguments, ft_args: FineTuneArguments) -> None:
    """Combinations that Trainer would only reject mid-run, rejected before anything loads."""
    if ft_args.early_stopping_patience is not None and (
        training_args.eval_strategy == "no" or not training_args.load_best_model_at_end
    ):
        raise ValueError(
            "--early_stopping_patience needs --eval_strategy (epoch or steps) and --load_best_model_at_end true"
        )
    if ft_args.cv_folds and training_args.resume_from_checkpoint:
        raise ValueError("--cv_folds trains its fold models afresh and never saves them, so there is nothing to resume: "
                         "drop --resume_from_checkpoint (or --cv_folds, to resume the final training alone)")
    if ft_args.cv_only and training_args.push_to_hub:
        raise ValueError("--cv_only trains no final model, so there is nothing to push: drop --push_to_hub or --cv_only")
    if ft_args.lr_find and training_args.resume_from_checkpoint:
        raise ValueError("--lr_find trains nothing that a checkpoint could resume: drop --resume_from_checkpoint")
    # an unknown optimizer name, a kwarg it does not take, a missing optional package: said now, not after loading
    resolve_optimizer(training_args, ft_args.torch_optimizer, ft_args.optimizer_kwargs)
    if ft_args.push_min_metric is not None and not training_args.push_to_hub:
        logger.warning("--push_min_metric is set but --push_to_hub is not: nothing will be pushed")


@contextmanager
def preserved_rng():
    """Python's, numpy's and torch's generators (CPU and every CUDA device) are restored on exit."""
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
             torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
        if state[3] is not None:
            torch.cuda.set_rng_state_all(state[3])


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Trainer's length-grouped sampler, shuffled by a generator seeded with ``seed + epoch``.

    Trainer builds it without a generator, so each epoch's shuffle comes from the global torch RNG, whose
    state depends on everything drawn before (dropout): a run resumed in epoch k > 0 then reshuffles the
    way epoch 0 did, and DDP ranks whose dropout drew different amounts disagree on the order. Seeding per
    epoch (as accelerate's ``SeedableRandomSampler`` does for random sampling) makes the order a function
    of the epoch alone.
    """

    def __init__(self, *args, seed: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from super().__iter__()
        self.epoch += 1  # the next pass reshuffles even where nobody calls set_epoch


class SeededRows(torch.utils.data.Dataset):
    """A training set each of whose rows is read under a torch seed of its own, from the run's seed, the epoch and
    the row's index: a random augmentation (a ``Dataset.with_transform`` transform, run where the row is loaded)
    then draws the same for a row however rows are loaded: in whichever DataLoader worker, on however many
    processes, and after a resume that skipped the epoch's first batches. Without it, workers draw from seeds taken
    when an epoch's iterator starts, and Trainer restores its RNG only after a resumed epoch's first batch: resuming
    mid-epoch augmented differently. ``epoch`` is set before each epoch's iterator starts (so before its workers
    copy this object; persistent workers would keep the first epoch's: not used with them)."""

    def __init__(self, rows, seed: int):
        self.rows, self.seed, self.epoch = rows, seed, 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        seed = np.random.SeedSequence([self.seed, self.epoch, int(index)]).generate_state(1, dtype=np.uint64)[0]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed) >> 1)  # a 63-bit seed
            return self.rows[index]


class SeededRowsEpochCallback(TrainerCallback):
    """Tells :class:`SeededRows` the epoch about to start (Trainer's ``on_epoch_begin`` comes before the epoch's
    DataLoader iterator; ``state.epoch`` is whole at an epoch's start, and ``k + fraction`` in a resumed epoch k)."""

    def __init__(self, rows: SeededRows):
        self.rows = rows

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.rows.epoch = math.floor(state.epoch or 0)


def has_lazy_transform(dataset) -> bool:
    """A ``datasets.Dataset`` with a ``with_transform`` transform (decoded and augmented as rows are read)."""
    format_ = getattr(dataset, "format", None)
    return isinstance(format_, Mapping) and format_.get("type") == "custom"


def reload_renamed_weights(model: nn.Module, folder) -> bool:
    """Put a checkpoint's weights into ``model`` where Trainer could not. transformers 5 saves some models' tensors
    under their original checkpoint names (DINOv2's attention as ``attention.attention.query``, a module that holds
    ``q_proj``), while Trainer's resume and best-model loading copy a checkpoint's tensors in by name, non-strictly:
    those weights silently kept their values of before (a resumed run diverged). Loading the folder through
    ``from_pretrained``, which renames them back, restores every one. Returns whether it had to."""
    from pathlib import Path

    from safetensors import safe_open
    from transformers import PreTrainedModel

    path = Path(folder) / "model.safetensors"
    if not isinstance(model, PreTrainedModel) or not path.is_file():
        return False
    with safe_open(str(path), "pt") as handle:
        saved = set(handle.keys())
    if saved <= set(model.state_dict()):
        return False
    reloaded = type(model).from_pretrained(str(folder), config=model.config)
    model.load_state_dict(reloaded.state_dict(), strict=False)
    logger.info("%s: %d tensors saved under other names, restored through from_pretrained", folder,
                len(saved - set(model.state_dict())))
    return True


class TrainBeginCallback(TrainerCallback):
    """Calls ``action()`` when training begins, once Trainer has restored a checkpoint's optimizer, scheduler and
    state (a resumed run) and before the first step."""

    def __init__(self, action):
        self.action = action

    def on_train_begin(self, args, state, control, **kwargs):
        self.action()


class FtTrainer(Trainer):
    """``Trainer`` with ftlib's optimizer groups, loss and safety checks. Extra keyword arguments:
    ``ft_args`` (:class:`FineTuneArguments`), ``anatomy``, ``class_weights`` (a tensor or None) and
    ``train_batch_transform`` (applied to training batches only, e.g. mixup / cutmix) and ``token_loss_normalizer``
    (token classification: every labelled token weighs the same in training, see :meth:`compute_loss`) and
    ``model_token_loss`` (causal LMs: the model's loss, averaged over the answer tokens of a whole step)."""

    def __init__(
        self,
        *args,
        ft_args: FineTuneArguments,
        anatomy: Anatomy | None = None,
        class_weights=None,
        train_batch_transform=None,
        token_loss_normalizer: float | None = None,
        model_token_loss: bool = False,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        # Trainer passes ``num_items_in_batch`` to models whose forward takes **kwargs, and then does not
        # divide the loss by the accumulation steps; BERT-family heads ignore it (they return a batch mean):
        # with --gradient_accumulation_steps N the gradients came out N times too large. The models' own losses
        # are per-batch means, divided by N by Trainer; ftlib's own loss (class weights, soft targets, per-token)
        # brings its own ``num_items_in_batch``, the accumulated batch's summed weight (see get_batch_samples).
        # ``model_token_loss`` (causal LMs): the model's own loss is a token sum divided by ``num_items_in_batch``,
        # the answer tokens of the whole accumulated batch on every process (Trainer's average_tokens_across_devices):
        # each answer token weighs the same in a step, however the rows fall into micro-batches.
        if not model_token_loss:
            self.model_accepts_loss_kwargs = False
        self.ft_args = ft_args
        self.train_batch_transform = train_batch_transform
        self.anatomy = anatomy or find_anatomy(self.model, ft_args.blocks_pattern)
        self.class_weights = class_weights
        self.token_loss_normalizer = token_loss_normalizer
        self.group_table = ""
        self._gradual: GradualUnfreezeCallback | None = None
        self._wrapped_trainable: set[int] = set()
        self.lengthened_by_budget = False  # whether --min_train_steps raised the epochs (a small training set)
        self.probe_first_metrics: dict[str, float] | None = None  # --probe_first: the head-only stage's train metrics
        self._apply_step_budget()
        if ft_args.gradual_unfreeze or ft_args.head_warmup_steps:
            flag = "--gradual_unfreeze" if ft_args.gradual_unfreeze else "--head_warmup_steps"
            if self.is_deepspeed_enabled or self.is_fsdp_enabled:
                raise ValueError(f"{flag} works with single-device and DDP runs, not FSDP or DeepSpeed")
            if ft_args.gradual_unfreeze:
                stages = staged_parameters(self.model, self.anatomy, ft_args.gradual_unfreeze_blocks)
                every, unit = ft_args.gradual_unfreeze, ft_args.gradual_unfreeze_unit
            else:  # head warm-up: two stages, the head, then everything else that trains
                head = self.anatomy.num_blocks + 1
                trainable = [name for name, p in self.model.named_parameters() if p.requires_grad]
                stages = [[n for n in trainable if self.anatomy.layer_id(n) == head],
                          [n for n in trainable if self.anatomy.layer_id(n) != head]]
                warmup = ft_args.head_warmup_steps
                every, unit = max(1, round(warmup * self.planned_steps()) if warmup < 1 else int(warmup)), "step"
            self._gradual = GradualUnfreezeCallback(stages, every, unit)
            self.add_callback(self._gradual)
        self._averaging: WeightAveragingCallback | None = None
        if ft_args.weight_averaging:
            if self.args.load_best_model_at_end:
                raise ValueError("--weight_averaging and --load_best_model_at_end disagree on which weights are "
                                 "final; use one of them")
            self._averaging = WeightAveragingCallback(ft_args.weight_averaging, ft_args.ema_decay, ft_args.swa_start)
            self._averaging.attach(self.model)
            self.add_callback(self._averaging)
        if ft_args.early_stopping_patience is not None:
            self.add_callback(EarlyStoppingCallback(ft_args.early_stopping_patience, ft_args.early_stopping_threshold))
        # lr/<group> and unfreeze/stage in every training log, ahead of the trackers (ftlib.training.tracking)
        GroupLearningRateCallback.install(self, (lambda: self._gradual.unfrozen_stages) if self._gradual else None)
        # the progress output prints the loss, two of those rates, the grad norm and the headline metrics
        names = self.anatomy.group_names()
        use_console_view(self, ConsoleView(
            base_key=group_key({"name": names[self.anatomy.num_blocks]}, 0), head_key=group_key({"name": names[-1]}, 0),
            classes=class_names(getattr(getattr(self.model, "config", None), "id2label", None)),
        ))
        self.resumed_from: str | None = None  # the checkpoint train() resumes from
        # a callback, the first: it runs once Trainer has restored a checkpoint's optimizer, before the progress bar
        self.callback_handler.callbacks.insert(0, TrainBeginCallback(self.show_restored_rates))
        self.last_eval_output = None  # the latest "eval" predictions and labels, for the report (ftlib.outputs.report)
        self._seeded_rows: SeededRows | None = None
        if has_lazy_transform(self.train_dataset):  # images: each row augmented under its own seed (SeededRows)
            if self.args.dataloader_persistent_workers:
                logger.warning("--dataloader_persistent_workers: the training rows' random augmentation is not seeded "
                               "per row, so a run resumed mid-epoch augments those rows differently")
            else:
                seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
                self._seeded_rows = SeededRows(self.train_dataset, seed)
                self.add_callback(SeededRowsEpochCallback(self._seeded_rows))

    # -- training budget -----------------------------------------------------------------------------
    def planned_steps(self) -> int:
        """Optimizer steps this run will take (as Trainer counts them: batches per epoch, then accumulation)."""
        if self.args.max_steps > 0:
            return self.args.max_steps
        batches = math.ceil(len(self.train_dataset) / (self.args.per_device_train_batch_size * self.args.world_size))
        per_epoch = max(1, math.ceil(batches / self.args.gradient_accumulation_steps))
        return math.ceil(per_epoch * self.args.num_train_epochs)

    def _apply_step_budget(self) -> None:
        """``--min_train_steps``: more epochs for small training sets; evaluations and saves keep their count."""
        args, min_steps = self.args, self.ft_args.min_train_steps
        if min_steps <= 0 or args.max_steps > 0 or self.train_dataset is None or not has_length(self.train_dataset):
            return
        rows_per_step = args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
        epochs = budget_epochs(len(self.train_dataset), rows_per_step, args.num_train_epochs, min_steps)
        if epochs == args.num_train_epochs:
            return
        planned_epochs = args.num_train_epochs
        args.num_train_epochs = epochs
        self.lengthened_by_budget = True
        total = self.planned_steps()
        interval = max(1, math.ceil(total / max(1.0, planned_epochs)))
        moved = []
        for kind in ("eval", "save"):  # per-epoch evaluation of a 50-epoch run would evaluate 50 times
            if getattr(args, f"{kind}_strategy") == IntervalStrategy.EPOCH:
                setattr(args, f"{kind}_strategy", IntervalStrategy.STEPS)
                setattr(args, f"{kind}_steps", interval)
                moved.append(kind)
        logger.info(
            "training budget (--min_train_steps %d): %d rows -> %g epochs, %d optimizer steps%s",
            min_steps, len(self.train_dataset), epochs, total,
            f"; {' and '.join(moved)} every {interval} steps" if moved else "",
        )

    # -- resume at the end -------------------------------------------------------------------------------
    def _run_epoch(self, *args, **kwargs):
        # Trainer takes a step before it checks max_steps: resumed from the checkpoint of the last step, when that
        # step is mid-epoch, it would train one step more than asked (and save checkpoint-(max_steps + 1)).
        if 0 < self.state.max_steps <= self.state.global_step:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    # -- hyperparameter search (ftlib.run.hp_search) ------------------------------------------------------
    def _report_to_hp_search(self, trial, step, metrics):
        """Report each evaluation to the trial at the quarter of training it falls in (0-4), not at its step:
        trials differ in epochs and batch size, and the pruner compares trials at the same reported step."""
        quarter = int(4 * self.state.global_step / max(1, self.state.max_steps))
        super()._report_to_hp_search(trial, quarter, metrics)

    # -- weight averaging, linear probing first ------------------------------------------------------
    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
        self.resumed_from = checkpoint or None  # what :meth:`show_restored_rates` names
        if self._averaging is not None and resume_from_checkpoint:
            self._averaging.load(checkpoint)
        if not resume_from_checkpoint and self.wants_probe_first():  # a resumed run's checkpoint holds the head
            self.probe_first()
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def wants_probe_first(self) -> bool:
        """``--probe_first``: ``yes``; ``small`` where the step budget lengthened training (a small set), the run
        trains more than its head and is not sharded (FSDP, DeepSpeed: ``yes`` is refused by ftlib.run.launch)."""
        mode = self.ft_args.probe_first
        sharded = self.is_fsdp_enabled or self.is_deepspeed_enabled
        return mode == "yes" or (mode == "small" and self.lengthened_by_budget and not self.ft_args.head_only
                                 and not sharded)

    def probe_first(self) -> dict[str, float]:
        """Linear probing, then fine-tuning (LP-FT; Kumar et al. 2022, "Fine-tuning can distort pretrained features"):
        the head alone trains first on the frozen model, with this run's data, batches and steps, at
        ``--probe_learning_rate`` (no evaluation, no checkpoint, no weight averaging), so that fine-tuning starts
        from a head that already fits the pretrained features: a random head sends large, noisy gradients into the
        pretrained blocks during the first steps. Only the head's weights change (and batch-norm statistics, where
        the model has them); the random number generators are left as they were, so the fine-tuning that follows
        takes the same batches and dropout masks as without the probe. Returns the probe's train metrics."""
        model, head = self.model, self.anatomy.num_blocks + 1
        trainable = {name: param.requires_grad for name, param in model.named_parameters()}
        head_names = [name for name, on in trainable.items() if on and self.anatomy.layer_id(name) == head]
        if not head_names:
            raise ValueError("--probe_first: the model has no trainable head parameter to train first")
        args = copy.copy(self.args)
        args.report_to, args.push_to_hub, args.load_best_model_at_end = [], False, False
        args.eval_strategy, args.save_strategy = IntervalStrategy.NO, SaveStrategy.NO
        probe_ft = probe_settings(self.ft_args)
        probe_ft.weight_averaging, probe_ft.early_stopping_patience = None, None
        for name, param in model.named_parameters():
            param.requires_grad_(name in head_names)
        probe = FtTrainer(
            model=model, args=args, train_dataset=self.train_dataset, data_collator=self.data_collator,
            processing_class=self.processing_class, ft_args=probe_ft, anatomy=self.anatomy,
            class_weights=self.class_weights, train_batch_transform=self.train_batch_transform,
            token_loss_normalizer=self.token_loss_normalizer,
        )
        logger.info("--probe_first: training the head alone first (%d tensors, learning rate %g, %d steps)",
                    len(head_names), probe_ft.head_learning_rate, probe.planned_steps())
        try:
            # it saves nothing, but Trainer creates its output directory: a temporary one, not in the run's
            with preserved_rng(), tempfile.TemporaryDirectory(prefix="ftlib-probe-first-") as folder:
                probe.args.output_dir = folder
                metrics = dict(probe.train().metrics)
        finally:
            for name, param in model.named_parameters():
                param.requires_grad_(trainable[name])
            probe.model = probe.model_wrapped = probe.optimizer = probe.lr_scheduler = None
        logger.info("--probe_first: the head is trained (train loss %.4f); fine-tuning starts from it",
                    metrics.get("train_loss", math.nan))
        self.probe_first_metrics = metrics
        return metrics

    def evaluate(self, *args, **kwargs):
        """Evaluation leaves the random number generators as it found them: the evaluation DataLoader draws its
        base seed from torch's generator, which would shift every later dropout mask and shuffle, so that the
        trained model depended on how often the run evaluates. During training with ``--weight_averaging``, the
        averaged weights are evaluated (then the raw ones put back)."""
        averaging = self._averaging
        with preserved_rng():
            if averaging is None or averaging.finished or not averaging.average:
                return super().evaluate(*args, **kwargs)
            averaging.swap()
            try:
                return super().evaluate(*args, **kwargs)
            finally:
                averaging.swap()

    def evaluation_loop(self, *args, **kwargs):
        output = super().evaluation_loop(*args, **kwargs)
        if kwargs.get("metric_key_prefix", "eval") == "eval":
            self.last_eval_output = output
        return output

    # -- checkpoints whose weights are saved under other names -------------------------------------
    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        reload_renamed_weights(model if model is not None else self.model, resume_from_checkpoint)

    def _load_best_model(self):
        super()._load_best_model()
        if self.state.best_model_checkpoint:
            reload_renamed_weights(self.model, self.state.best_model_checkpoint)

    # -- optimizer ---------------------------------------------------------------------------------
    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        ft = self.ft_args
        groups = build_param_groups(
            opt_model,
            self.anatomy,
            self.args.learning_rate,
            head_lr=ft.head_learning_rate,
            layer_decay=ft.layer_decay,
            weight_decay=self.args.weight_decay,
            loraplus_lr_ratio=ft.loraplus_lr_ratio,
        )
        cls, kwargs = resolve_optimizer(self.args, ft.torch_optimizer, ft.optimizer_kwargs)
        self.optimizer = create_optimizer(groups, cls, kwargs)
        if self._gradual is not None:
            # With --restore_callback_states_from_checkpoint, resuming replaces the callback by a new instance
            # (before this runs): follow it, so that ``_gradual`` is the one that sees the steps.
            self._gradual = next(
                cb for cb in self.callback_handler.callbacks if isinstance(cb, GradualUnfreezeCallback)
            )
            # Freeze the later stages now, before the model is wrapped: DDP registers what requires grad.
            self._gradual.apply(opt_model, self._gradual.stage_at(self.state.global_step, self.state.epoch))
        self._wrapped_trainable = {id(p) for p in opt_model.parameters() if p.requires_grad}
        self.group_table = format_group_table(
            opt_model, self.optimizer, self._gradual.schedule() if self._gradual else None, self.anatomy
        )
        if self.is_world_process_zero():
            print(f"Optimizer {type(self.optimizer).__name__}, parameter groups:\n{self.group_table}", flush=True)
        return self.optimizer

    def show_restored_rates(self) -> None:
        """Trainer's resume restores the checkpoint's optimizer and scheduler state, learning rates included,
        whatever this run's flags say (``--allow_config_change``): when those rates differ from the table printed
        by :meth:`create_optimizer`, print the table again with the rates really used (and the model card's).
        Called when training begins (:class:`TrainBeginCallback`), after Trainer has restored that state."""
        checkpoint = self.resumed_from
        if checkpoint is None or self.optimizer is None or not self.group_table:
            return
        model = self.accelerator.unwrap_model(self.model)
        groups = self.optimizer.param_groups
        restored = SimpleNamespace(param_groups=[{**g, "lr": g.get("initial_lr", g["lr"])} for g in groups])
        table = format_group_table(model, restored, self._gradual.schedule() if self._gradual else None, self.anatomy)
        if table == self.group_table:
            return
        self.group_table = table
        now = ", ".join(f"{g.get('name', i)} {g['lr']:.3g}" for i, g in enumerate(groups))
        message = (f"Resumed from {checkpoint}: its optimizer and scheduler state set the learning rates, not this "
                   f"run's flags; parameter groups (lr: the checkpoint's schedule):\n{table}\n"
                   f"learning rates at step {self.state.global_step}: {now}")
        logger.warning("resumed optimizer learning rates differ from this run's flags: %s", now)
        if self.is_world_process_zero():
            print(message, flush=True)

    # -- sampling order ------------------------------------------------------------------------------
    def get_train_dataloader(self):
        if self._seeded_rows is None or self._seeded_rows.rows is not self.train_dataset:
            return super().get_train_dataloader()
        rows, self.train_dataset = self.train_dataset, self._seeded_rows
        try:
            return super().get_train_dataloader()
        finally:
            self.train_dataset = rows

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:  # exact resume and equal DDP shards: see the class
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            sampler = EpochSeededLengthGroupedSampler(sampler.batch_size, lengths=sampler.lengths, seed=seed)
        return sampler

    def _get_eval_sampler(self, eval_dataset):
        """Evaluate in dataset order. Trainer groups evaluation batches by length too when
        ``train_sampling_strategy`` is ``group_by_length``, which permutes the predictions; recipes pair
        predictions with rows (ids, words of a sentence) by position."""
        if eval_dataset is None or not has_length(eval_dataset):
            return None
        # distributed: None lets accelerate shard in order; gather_for_metrics restores the order
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None

    # -- loss --------------------------------------------------------------------------------------
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The micro-batches of one optimizer step, with ``train_batch_transform`` (mixup / cutmix) applied, and
        the normaliser of ftlib's loss over all of them: the summed class weight of their labels (see
        :func:`loss_normaliser`), over every process, or for the per-token loss the constant of a whole step.
        :meth:`compute_loss` divides each micro-batch's summed loss by it, so the accumulated gradient is that of
        one weighted mean over the whole accumulated batch whatever the weight of each micro-batch (Trainer's
        ``num_items_in_batch``, generalised to class weights and soft targets)."""
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.train_batch_transform is not None:
            batches = [self.train_batch_transform(batch) for batch in batches]
        normaliser = self._step_normaliser(batches, device)
        # the loss of an ftlib-normalised step is already scaled for accumulation; None: Trainer decides
        self.loss_is_scaled_for_ga = True if normaliser is not None else None
        return batches, (normaliser if normaliser is not None else num_items)

    def _step_normaliser(self, batches: list, device) -> torch.Tensor | None:
        labels = [batch.get("labels") if isinstance(batch, Mapping) else None for batch in batches]
        if not labels or any(label is None for label in labels):
            return None
        problem_type = getattr(self.model.config, "problem_type", None)
        kind = ftlib_loss_kind(labels[0], problem_type, self.class_weights is not None,
                               self.token_loss_normalizer is not None)
        processes = self.accelerator.num_processes
        if kind is None:
            return None
        if kind == "per_token":  # a constant: every labelled token weighs the same in every step
            steps = self.args.gradient_accumulation_steps
            return torch.tensor(self.token_loss_normalizer * steps * processes, device=device)
        total = sum(loss_normaliser(label, problem_type, self.class_weights).to(device) for label in labels)
        if processes > 1:  # every process divides by the sum over all of them; DDP then averages the gradients
            total = self.accelerator.gather(total.reshape(1)).sum()
        return total

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Trainer's loss, or ftlib's where class weights, soft labels or a token-loss normaliser are in play: a
        batch's summed (class-weighted) loss (:func:`loss_sum`) divided by

        - in training, ``num_items_in_batch`` from :meth:`get_batch_samples`: the summed class weight of the whole
          accumulated batch, on every process (times the process count, which DDP's gradient average divides out),
          so that 8 rows in one batch and 4 + 4 accumulated take the same step whatever their labels;
        - otherwise (evaluation), the batch's own summed weight (:func:`loss_normaliser`): its weighted mean.

        Soft (mixup / cutmix) targets are normalised like hard ones, by their summed class weight: a one-hot
        soft target gives the hard-target loss, class weights or not.

        Token classification with ``token_loss_normalizer`` (training only): the summed loss of a batch's labelled
        tokens is divided by that constant, the training set's mean (class-weighted) count per batch, not by the
        batch's own count. A per-batch mean gives each token of a batch of short sentences many times the weight of
        a token in a batch of long ones; length-grouped batches make that systematic (CoNLL-2003: 23 to 1,056
        labelled tokens per batch of 32, sentences of up to 5 words then weigh 29% instead of 8%). With the
        constant (times the accumulation steps and processes in a step) every token weighs the same in every step.
        Evaluation keeps the per-batch mean, comparable across runs."""
        labels = inputs.get("labels")
        problem_type = getattr(self.model.config, "problem_type", None)
        kind = ftlib_loss_kind(labels, problem_type, self.class_weights is not None,
                               self.token_loss_normalizer is not None and model.training)
        if kind is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        weights = None if self.class_weights is None else self.class_weights.to(logits.device, logits.dtype)
        total = loss_sum(logits, labels, problem_type, weights)
        if model.training and num_items_in_batch is not None:
            step_weight = torch.as_tensor(num_items_in_batch, dtype=total.dtype, device=total.device)
            loss = total / step_weight.clamp_min(1e-12) * self.accelerator.num_processes
        elif kind == "per_token":
            loss = total / self.token_loss_normalizer
        else:  # a batch whose labels weigh nothing (all -100) has a zero sum: 0, not 0 / 0
            loss = total / loss_normaliser(labels, problem_type, weights).to(total.dtype).clamp_min(1e-12)
        return (loss, outputs) if return_outputs else loss

    # -- one step ------------------------------------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)  # batches come transformed
        if not torch.isfinite(loss).all():
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at step {self.state.global_step + 1} "
                f"(epoch {self.state.epoch or 0:.2f}); weights were not updated and the last saved checkpoint "
                f"in {self.args.output_dir} is intact. Lower the learning rate or check the data."
            )
        if self._gradual is not None and self.accelerator.sync_gradients:
            self._sync_unfrozen_gradients(model)
        return loss

    def _sync_unfrozen_gradients(self, model) -> None:
        """DDP all-reduces only what required grad when it wrapped the model; average the rest here."""
        if self.accelerator.distributed_type not in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
            return
        world = self.accelerator.num_processes
        for param in self.accelerator.unwrap_model(model).parameters():
            if param.requires_grad and param.grad is not None and id(param) not in self._wrapped_trainable:
                torch.distributed.all_reduce(param.grad, op=torch.distributed.ReduceOp.SUM)
                param.grad.div_(world)
