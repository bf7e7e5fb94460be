"""The fine-tuning strategy's flags (freezing, learning-rate groups, gradual unfreezing, LoRA, small-data
strategies, loss and outputs). Checks that need only the arguments live in ``__post_init__``; checks that need
the model (more blocks frozen than exist) run in :mod:`ftlib.strategy.freezing` before training starts."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from ftlib.core.options import refuse_without


@dataclass
class FineTuneArguments:
    """The fine-tuning strategy: freezing, learning-rate groups, gradual unfreezing, LoRA, loss and outputs."""

    # Freezing
    freeze_embeddings: bool = field(default=False, metadata={"help": "Freeze the embedding layer."})
    freeze_lower_blocks: int = field(default=0, metadata={"help": "Freeze the N lowest blocks (and the embeddings)."})
    train_top_blocks: int | None = field(
        default=None, metadata={"help": "Keep only the N top blocks and the head trainable; freeze everything below."}
    )
    freeze_patterns: list[str] | None = field(
        default=None, metadata={"help": "Regexes (re.search) on parameter names; matching parameters are frozen."}
    )
    head_only: bool = field(default=False, metadata={"help": "Train the task head only (a linear probe)."})
    freeze_backbone: bool = field(
        default=False,
        metadata={"help": "Freeze the whole backbone (embeddings and every block); the head trains: for detection and "
                          "segmentation the detection transformer or decode head. The same as --head_only."},
    )
    blocks_pattern: str | None = field(
        default=None,
        metadata={"help": "Regex (fullmatch) on module paths naming the blocks, when they cannot be discovered."},
    )
    # Discriminative learning rates
    head_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the task head (default: --learning_rate)."}
    )
    layer_decay: float = field(
        default=1.0,
        metadata={"help": "Layer-wise LR decay: block k from the top gets learning_rate * decay**k; 1.0 = one rate."},
    )
    # Gradual unfreezing (ULMFiT)
    gradual_unfreeze: int = field(
        default=0,
        metadata={"help": "Start with the head only and unfreeze one more block group every N units (0 = off)."},
    )
    gradual_unfreeze_unit: str = field(
        default="epoch", metadata={"help": "Unit of --gradual_unfreeze: 'epoch' or 'step'.", "choices": ["epoch", "step"]}
    )
    gradual_unfreeze_blocks: int = field(default=1, metadata={"help": "Blocks unfrozen at each stage."})
    # Optimizer beyond Trainer's --optim
    torch_optimizer: str | None = field(
        default=None,
        metadata={"help": "A torch.optim class by name (NAdam, Adamax, Adadelta, Adagrad, SGD, ...); overrides --optim."},
    )
    torch_optimizer_kwargs: str | None = field(
        default=None, metadata={"help": 'JSON keyword arguments for --torch_optimizer, e.g. \'{"momentum": 0.9}\'.'}
    )
    # LoRA
    lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (peft) instead of the full weights."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA path."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Module names to adapt (default: per architecture family)."}
    )
    lora_save: str = field(
        default="adapter",
        metadata={"help": "Save (and push) the 'adapter' only or the 'merged' model.", "choices": ["adapter", "merged"]},
    )
    lora_use_rslora: bool = field(
        default=False,
        metadata={"help": "rsLoRA: scale the adapters by alpha / sqrt(r) instead of alpha / r (peft's use_rslora), "
                          "which keeps high ranks learning."},
    )
    lora_use_dora: bool = field(
        default=False,
        metadata={"help": "DoRA: adapt each weight's direction with LoRA and learn its magnitude apart (peft's use_dora)."},
    )
    loraplus_lr_ratio: float | None = field(
        default=None,
        metadata={"help": "LoRA+: the B matrices train at this multiple of the A matrices' learning rate (the paper "
                          "suggests 16); their own optimizer groups, shown in the group table."},
    )
    # Loss and stopping
    class_weights: str | None = field(
        default=None, metadata={"help": "'balanced' (from train label counts) or comma-separated weights per label."}
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after N evaluations without improvement of metric_for_best_model."}
    )
    early_stopping_threshold: float = field(default=0.0, metadata={"help": "Minimum improvement that counts."})
    # Small training sets (see ftlib.strategy.small_data)
    min_train_steps: int = field(
        default=0,
        metadata={"help": "Training budget: raise the number of epochs until training takes at least N optimizer "
                          "steps, so that a small set is not fine-tuned in a few dozen steps (0 = off; --max_steps wins)."},
    )
    reinit_top_blocks: int = field(
        default=0, metadata={"help": "Re-initialise the top N blocks (and the pooler above them) before training."}
    )
    head_warmup_steps: float = field(
        default=0.0,
        metadata={"help": "Train the head alone for the first N optimizer steps (a fraction of training when < 1), "
                          "then the whole model: the fresh head stops sending noise into the pretrained blocks."},
    )
    compare_head_only: str = field(
        default="no",
        metadata={"help": "Also train a linear probe (the head alone, at --probe_learning_rate, same steps) after the "
                          "model and keep whichever of the two scores better on the validation split (its "
                          "--metric_for_best_model; the loss breaks a tie): 'yes', 'small' (only where the step budget "
                          "--min_train_steps lengthens training, i.e. small sets) or 'no'. Not with --head_only, --lora, "
                          "--hp_search or --cv_folds ('small' then trains as asked).",
                  "choices": ["no", "small", "yes"]},
    )
    probe_first: str = field(
        default="no",
        metadata={"help": "Linear probing, then fine-tuning (LP-FT): before the run trains, the head alone trains on the "
                          "frozen model (at --probe_learning_rate, the run's steps), so that fine-tuning starts from a "
                          "trained head instead of a random one: 'yes', 'small' (only where the step budget "
                          "--min_train_steps lengthens training, i.e. small sets) or 'no'. Not with --head_only; skipped "
                          "on resume (the checkpoint holds the head).",
                  "choices": ["no", "small", "yes"]},
    )
    probe_learning_rate: float = field(
        default=1e-3, metadata={"help": "Learning rate of the head in the linear probe of --compare_head_only and "
                                        "--probe_first."}
    )
    batch_norm: str = field(
        default="train",
        metadata={"help": "Batch-norm layers in training: 'train' (batch statistics; the running ones follow with "
                          "--batch_norm_momentum) or 'frozen' (pretrained statistics throughout, as at evaluation).",
                  "choices": ["train", "frozen"]},
    )
    batch_norm_momentum: float | None = field(
        default=None,
        metadata={"help": "Momentum of every batch-norm layer's running statistics (PyTorch's sense: the weight of "
                          "the new batch; default: the checkpoint's)."},
    )
    weight_averaging: str | None = field(
        default=None,
        metadata={"help": "Evaluate and save an average of the weights: 'ema' (exponential) or 'swa' (mean from "
                          "--swa_start on).", "choices": ["ema", "swa"]},
    )
    ema_decay: float = field(default=0.999, metadata={"help": "Decay of --weight_averaging ema (warmed up: min(decay, (1+t)/(10+t)))."})
    swa_start: float = field(default=0.5, metadata={"help": "Fraction of training after which --weight_averaging swa averages."})
    # Learning-rate range test (see ftlib.run.lr_find)
    lr_find: bool = field(
        default=False,
        metadata={"help": "Instead of training, sweep the learning rate exponentially for a few steps (every group "
                          "scaled together), plot the loss (lr_find.png) and print the --learning_rate to use; nothing "
                          "trained is kept."},
    )
    lr_find_start: float = field(default=1e-7, metadata={"help": "First base learning rate of --lr_find."})
    lr_find_end: float = field(default=1.0, metadata={"help": "Last base learning rate of --lr_find (it stops earlier "
                                                              "when the loss diverges)."})
    lr_find_steps: int = field(default=100, metadata={"help": "Optimizer steps of the --lr_find sweep."})
    # Cross-validation (see ftlib.run.cv)
    cv_folds: int = field(
        default=0,
        metadata={"help": "Before the final model, K-fold cross-validation of the training split: K fresh models, each "
                          "trained with the full strategy on K-1 folds and evaluated on the fold it did not see, every "
                          "metric reported as mean and standard deviation across folds (cv_results.json; "
                          "all_results.json cv_<metric>_mean / _std) with the out-of-fold predictions "
                          "(cv_oof_predictions.csv). Folds are seeded by --seed and stratified by label for "
                          "single-label classification (StratifiedKFold: K at most the smallest class's row count); "
                          "multi-label, regression and token classification get plain shuffled folds (KFold). "
                          "0 = off."},
    )
    cv_only: bool = field(
        default=False,
        metadata={"help": "With --cv_folds: stop after the cross-validation, without training the final model."},
    )
    group_column: str | None = field(
        default=None,
        metadata={"help": "With --cv_folds: a training-data column whose rows belong together (a speaker, a patient, a "
                          "document); all rows of a group fall in one fold, never on both sides of a split "
                          "(StratifiedGroupKFold / GroupKFold). Token data: a field of a JSON lines file or a column "
                          "of a Hub dataset."},
    )
    # Hyperparameter search (see ftlib.run.hp_search)
    hp_search: int = field(
        default=0,
        metadata={"help": "Before the final model, N trials of an Optuna search (TPE, seeded by --seed), each a fresh model "
                          "trained with the run's strategy and scored on the validation split (metric_for_best_model); "
                          "weak trials are pruned; the final model trains with the best values (config.yaml, the "
                          "model card, hp_search.json). Resumable: the study is kept in hp_search/study.journal. "
                          "0 = off."},
    )
    hp_space: str | None = field(
        default=None,
        metadata={"help": "With --hp_search: changes to the default space (learning_rate, head_learning_rate, "
                          "layer_decay, warmup_steps, num_train_epochs), a YAML block in a config or JSON here: "
                          "name: [low, high] | {low, high, log} | {choices: [...]} | null (not searched)."},
    )
    hp_search_prune: bool = field(
        default=True,
        metadata={"help": "With --hp_search: stop a trial whose validation metric is below the median of earlier "
                          "trials at the same point of training (Optuna's MedianPruner)."},
    )
    # Evaluation
    extra_metrics: list[str] | None = field(
        default=None,
        metadata={"help": "evaluate modules computed at every evaluation next to the built-in metrics: Hub names "
                          "(online) or local module scripts / folders (offline); one that does not load is an error."},
    )
    # Outputs and Hub
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow writing into an output directory that holds a finished model."}
    )
    allow_config_change: bool = field(
        default=False,
        metadata={"help": "Resume from a checkpoint whose saved config.yaml differs from this run's (beyond the keys "
                          "that may always change); the checkpoint's optimizer and scheduler state still set the "
                          "learning rates."},
    )
    push_min_metric: float | None = field(
        default=None,
        metadata={"help": "Quality gate: refuse to push when the evaluation metric_for_best_model is below this."},
    )

    def __post_init__(self) -> None:
        if self.freeze_backbone:
            self.head_only = True  # one mechanism; the name a detection or segmentation user looks for
        if not (0.0 < self.layer_decay <= 1.0) or math.isnan(self.layer_decay):
            raise ValueError(f"--layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.head_learning_rate is not None and not self.head_learning_rate > 0:
            raise ValueError(f"--head_learning_rate must be positive, got {self.head_learning_rate}")
        for name in ("freeze_lower_blocks", "gradual_unfreeze"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if self.train_top_blocks is not None and self.train_top_blocks < 0:
            raise ValueError(f"--train_top_blocks must be >= 0, got {self.train_top_blocks}")
        if self.gradual_unfreeze_blocks < 1:
            raise ValueError(f"--gradual_unfreeze_blocks must be >= 1, got {self.gradual_unfreeze_blocks}")
        exclusive = [
            name
            for name, active in (
                ("freeze_lower_blocks", self.freeze_lower_blocks > 0),
                ("train_top_blocks", self.train_top_blocks is not None),
                ("head_only", self.head_only),
                ("gradual_unfreeze", self.gradual_unfreeze > 0),
            )
            if active
        ]
        if len(exclusive) > 1:
            raise ValueError(f"choose one of --{' / --'.join(exclusive)}: they each decide which blocks train")
        for name in ("min_train_steps", "reinit_top_blocks"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if not self.head_warmup_steps >= 0 or (self.head_warmup_steps > 1 and self.head_warmup_steps != int(self.head_warmup_steps)):
            raise ValueError(f"--head_warmup_steps must be a step count or a fraction below 1, got {self.head_warmup_steps}")
        if self.head_warmup_steps and (self.gradual_unfreeze or self.head_only):
            other = "--gradual_unfreeze" if self.gradual_unfreeze else "--head_only"
            raise ValueError(f"choose --head_warmup_steps or {other}: both decide when the blocks start training")
        if self.compare_head_only not in ("no", "small", "yes"):
            raise ValueError(f"--compare_head_only must be no, small or yes, got {self.compare_head_only!r}")
        if not self.probe_learning_rate > 0:
            raise ValueError(f"--probe_learning_rate must be positive, got {self.probe_learning_rate}")
        if self.compare_head_only == "yes" and self.probe_conflicts():
            raise ValueError(f"--compare_head_only yes: not with {' / '.join(self.probe_conflicts())} (the comparison "
                             "is between the run's fine-tuning and a linear probe)")
        if self.probe_first not in ("no", "small", "yes"):
            raise ValueError(f"--probe_first must be no, small or yes, got {self.probe_first!r}")
        if self.probe_first == "yes" and self.head_only:
            raise ValueError("--probe_first yes with --head_only: the run itself trains the head alone; there is no "
                             "fine-tuning to start from a trained head")
        refuse_without(self, "--compare_head_only or --probe_first",
                       self.compare_head_only != "no" or self.probe_first != "no", ("probe_learning_rate",))
        if self.batch_norm_momentum is not None and not 0.0 <= self.batch_norm_momentum <= 1.0:
            raise ValueError(f"--batch_norm_momentum must be in [0, 1], got {self.batch_norm_momentum}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"--ema_decay must be in (0, 1), got {self.ema_decay}")
        if not 0.0 <= self.swa_start < 1.0:
            raise ValueError(f"--swa_start must be in [0, 1), got {self.swa_start}")
        if self.lora_r <= 0:
            raise ValueError(f"--lora_r must be positive, got {self.lora_r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.torch_optimizer_kwargs is not None:
            try:
                kwargs = json.loads(self.torch_optimizer_kwargs)
            except json.JSONDecodeError as err:
                raise ValueError(f"--torch_optimizer_kwargs is not valid JSON: {err}") from None
            if not isinstance(kwargs, dict):
                raise ValueError("--torch_optimizer_kwargs must be a JSON object")
        if self.class_weights is not None and self.class_weights != "balanced":
            try:
                weights = [float(w) for w in self.class_weights.split(",")]
            except ValueError:
                raise ValueError(
                    f"--class_weights must be 'balanced' or comma-separated numbers, got {self.class_weights!r}"
                ) from None
            if any(not w > 0 for w in weights):
                raise ValueError(f"--class_weights must all be positive, got {self.class_weights!r}")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ValueError(f"--early_stopping_patience must be >= 1, got {self.early_stopping_patience}")
        if self.cv_folds == 1 or self.cv_folds < 0:
            raise ValueError(f"--cv_folds must be >= 2 (or 0: no cross-validation), got {self.cv_folds}")
        if self.cv_folds and self.lr_find:
            raise ValueError("--cv_folds with --lr_find: the range test trains nothing to cross-validate; run --lr_find "
                             "first, then --cv_folds with the learning rate it suggests")
        if self.hp_search < 0:
            raise ValueError(f"--hp_search must be >= 0 (0: no search), got {self.hp_search}")
        if self.hp_search and self.lr_find:
            raise ValueError("--hp_search with --lr_find: the range test trains nothing to search over; run --lr_find "
                             "first, or --hp_search alone (its space includes the learning rate)")
        refuse_without(self, "--hp_search", self.hp_search > 0, ("hp_space", "hp_search_prune"))
        if not 0 < self.lr_find_start < self.lr_find_end or not math.isfinite(self.lr_find_end):
            raise ValueError(f"--lr_find_start and --lr_find_end need 0 < start < end, got {self.lr_find_start} and "
                             f"{self.lr_find_end}")
        if self.lr_find_steps < 10:
            raise ValueError(f"--lr_find_steps must be >= 10, got {self.lr_find_steps}")
        # flags that act only together with another one
        if self.loraplus_lr_ratio is not None and not (self.loraplus_lr_ratio > 0 and math.isfinite(self.loraplus_lr_ratio)):
            raise ValueError(f"--loraplus_lr_ratio must be a positive number, got {self.loraplus_lr_ratio}")
        refuse_without(self, "--lora", self.lora, ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_save",
                                                   "lora_use_rslora", "lora_use_dora", "loraplus_lr_ratio"))
        refuse_without(self, "--gradual_unfreeze", self.gradual_unfreeze > 0, ("gradual_unfreeze_unit", "gradual_unfreeze_blocks"))
        refuse_without(self, "--early_stopping_patience", self.early_stopping_patience is not None,
                       ("early_stopping_threshold",))
        refuse_without(self, "--torch_optimizer", self.torch_optimizer is not None, ("torch_optimizer_kwargs",))
        refuse_without(self, "--weight_averaging ema", self.weight_averaging == "ema", ("ema_decay",))
        refuse_without(self, "--weight_averaging swa", self.weight_averaging == "swa", ("swa_start",))
        refuse_without(self, "--cv_folds", self.cv_folds > 0, ("cv_only", "group_column"))
        refuse_without(self, "--lr_find", self.lr_find, ("lr_find_start", "lr_find_end", "lr_find_steps"))

    def probe_conflicts(self) -> list[str]:
        """The flags given with which --compare_head_only has nothing to compare (or would change their meaning)."""
        return [f"--{name}" for name in ("head_only", "lora", "hp_search", "cv_folds") if getattr(self, name)]

    @property
    def optimizer_kwargs(self) -> dict:
        return json.loads(self.torch_optimizer_kwargs) if self.torch_optimizer_kwargs else {}
