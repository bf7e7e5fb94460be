"""Argument dataclasses shared by every recipe.

Each recipe parses ``(ModelArguments, <its data arguments>, FineTuneArguments, TrainingArguments)`` with
:func:`ftlib.cli.parse_args`, so every standard ``TrainingArguments`` flag keeps working unchanged.
Checks that need only the arguments live in ``__post_init__``; checks that need the model (more blocks
frozen than exist) run in :mod:`ftlib.freezing` before training starts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields

from ftlib.data.knobs import check_knobs


def option_name(value) -> str:
    """The name of a ``TrainingArguments`` choice (``optim``, ``lr_scheduler_type``, ``parallel_mode``): parsing
    makes it an enum, whose ``str()`` is ``"OptimizerNames.ADAMW_TORCH"``; code that sets the field later may leave
    the plain string."""
    return str(getattr(value, "value", value))


def refuse_without(args, gate: str, active: bool, names: tuple[str, ...]) -> None:
    """Flags that act only together with ``gate``: set to a non-default value while ``gate`` is off, they would
    do nothing, so they are an error naming both (a flag a recipe accepts does something, or is refused)."""
    if active:
        return
    defaults = {f.name: f.default for f in fields(args)}
    given = [f"--{name}" for name in names if getattr(args, name) != defaults[name]]
    if given:
        raise ValueError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} nothing without {gate}")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Hub model id or local checkpoint directory."})
    revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the Hub checkpoint."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded checkpoints are stored."})
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run modelling code shipped inside the checkpoint. Off by default: it executes code from the Hub."},
    )
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "Replace a checkpoint head whose size disagrees with the labels (off: such a mismatch is an error)."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": 'JSON object (a mapping in YAML) of model config attributes to change before loading, e.g. '
                          '\'{"drop_path_rate": 0.1}\'; a name the config does not have is an error.'},
    )
    gguf_file: str | None = field(
        default=None,
        metadata={"help": "A GGUF file (llama.cpp) to start from: --model_name_or_path is then the folder holding it "
                          "(or the file itself). Dequantized to float32 and converted once into a transformers folder "
                          "in ftlib's cache (needs the gguf package). A .gguf path as --model_name_or_path works too."},
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={"help": "Attention kernel, passed to from_pretrained: 'eager', 'sdpa', 'flash_attention_2', ... "
                          "(default: transformers' choice)."},
    )

    def __post_init__(self) -> None:
        if not self.model_name_or_path:
            raise ValueError("--model_name_or_path is required")
        if self.gguf_file is not None and not self.gguf_file:
            raise ValueError("--gguf_file is empty")
        self.config_updates  # noqa: B018 - parse now, so a bad value fails with the other argument errors

    @property
    def config_updates(self) -> dict:
        """``--config_overrides`` as a dict."""
        if not self.config_overrides:
            return {}
        try:
            updates = json.loads(self.config_overrides)
        except json.JSONDecodeError as err:
            raise ValueError(f"--config_overrides is not valid JSON: {err}") from None
        if not isinstance(updates, dict):
            raise ValueError(f"--config_overrides must be a JSON object, got {self.config_overrides!r}")  # noqa: TRY004
        return updates


@dataclass
class CausalLMModelArguments(ModelArguments):
    """The model arguments of causal language models: those of every recipe, and 4-bit loading (QLoRA)."""

    load_in_4bit: bool = field(
        default=False,
        metadata={"help": "QLoRA: load the base model in 4 bits (bitsandbytes NF4, double quantization, bf16 compute) "
                          "and train LoRA adapters on it. CUDA only; needs --lora and bitsandbytes."},
    )


@dataclass
class DataArguments:
    """Data fields every task shares; each recipe extends it with its own columns."""

    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset name (datasets.load_dataset)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    train_split: str = field(default="train", metadata={"help": "Split name used for training."})
    validation_split: str | None = field(
        default=None, metadata={"help": "Split used for evaluation ('validation' if the dataset has one)."}
    )
    test_split: str | None = field(default=None, metadata={"help": "Split used for predictions ('test' if present)."})
    train_file: str | None = field(default=None, metadata={"help": "Local training file."})
    validation_file: str | None = field(default=None, metadata={"help": "Local validation file."})
    test_file: str | None = field(default=None, metadata={"help": "Local test file (predictions are written for it)."})
    label_column: str = field(default="label", metadata={"help": "Name of the label column."})
    validation_split_percentage: float = field(
        default=10.0,
        metadata={"help": "Without a validation split, hold out this percentage of train (seeded, stratified)."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate training data (debugging, quick runs)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate evaluation data."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Truncate test data."})
    drop_empty: bool = field(
        default=False,
        metadata={"help": "Drop train and validation rows whose input (text, image, words) is empty; without it they "
                          "are counted and warned about, and more than 5% of a split is an error. Test rows are kept."},
    )
    preprocessing_num_workers: int | None = field(
        default=None,
        metadata={"help": "Workers preparing the data before training: dataset.map processes (tokenising text and "
                          "words), threads decoding every image once (image classification)."},
    )

    def _source_fields(self) -> tuple[str, ...]:
        """The fields naming where the data comes from; exactly one is given (a recipe may add its own)."""
        return ("dataset_name", "train_file")

    def __post_init__(self) -> None:
        flags = [f"--{name}" for name in self._source_fields()]
        given = [f"--{name}" for name in self._source_fields() if getattr(self, name) is not None]
        if not given:
            raise ValueError(f"give either {' or '.join(flags)}")
        if len(given) > 1:
            raise ValueError(f"give {' or '.join(given)}, not {'both' if len(given) == 2 else 'several'}")
        if not 0.0 < self.validation_split_percentage < 100.0:
            raise ValueError(f"--validation_split_percentage must be in (0, 100), got {self.validation_split_percentage}")
        refuse_without(self, "--dataset_name", self.dataset_name is not None,
                       ("dataset_config_name", "train_split", "validation_split", "test_split"))
        refuse_without(self, "--train_file", self.train_file is not None, ("validation_file", "test_file"))
        if self.preprocessing_num_workers is not None and self.preprocessing_num_workers < 1:
            raise ValueError(f"--preprocessing_num_workers must be >= 1, got {self.preprocessing_num_workers}")
        for name in ("max_train_samples", "max_eval_samples", "max_predict_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name} must be positive, got {value}")


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
    # Small training sets (see ftlib.small_data)
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
    # Learning-rate range test (see ftlib.lr_find)
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
    # Cross-validation (see ftlib.cv)
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
    # Hyperparameter search (see ftlib.hp_search)
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


def tune_thresholds_field():
    """``--tune_thresholds``, the same in every recipe with multi-label classification (text, image)."""
    return field(
        default=None,
        metadata={"help": "Multi-label: tune one decision threshold per label on the validation split at the end of "
                          "training (each label's best F1), saved with the model as thresholds.json and used for the "
                          "test predictions and by ftlib-predict. Unset: on for multi-label; false: 0.5 for every label."},
    )


@dataclass
class TextDataArguments(DataArguments):
    text_column: str = field(default="text", metadata={"help": "Column with the text (the first sentence of a pair)."})
    text_pair_column: str | None = field(default=None, metadata={"help": "Column with the second sentence of a pair."})
    id_column: str | None = field(default=None, metadata={"help": "Column identifying rows in predictions (default: row number)."})
    problem_type: str | None = field(
        default=None,
        metadata={
            "help": "Leave unset to detect from the label column (floats: regression, lists: multi-label).",
            "choices": ["single_label_classification", "multi_label_classification", "regression"],
        },
    )
    label_separator: str | None = field(
        default=None, metadata={"help": "Multi-label from strings like 'a;b': the separator (';')."}
    )
    tune_thresholds: bool | None = tune_thresholds_field()
    max_seq_length: int | None = field(
        default=256, metadata={"help": "Longest tokenised input; capped at the model's limit. Batches pad dynamically."}
    )
    truncation: str = field(
        default="head",
        metadata={"help": "'head' keeps the start of long texts; 'head_tail' keeps start and end.", "choices": ["head", "head_tail"]},
    )
    head_fraction: float = field(default=0.25, metadata={"help": "Share of the budget kept from the start with head_tail."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_seq_length is not None and self.max_seq_length < 8:
            raise ValueError(f"--max_seq_length must be at least 8, got {self.max_seq_length}")
        if not 0.0 <= self.head_fraction <= 1.0:
            raise ValueError(f"--head_fraction must be in [0, 1], got {self.head_fraction}")
        refuse_without(self, "--truncation head_tail", self.truncation == "head_tail", ("head_fraction",))


@dataclass
class TokenDataArguments(DataArguments):
    """Token classification: CoNLL files (.txt/.conll/.iob/.bio), JSON lines, or a Hub dataset with word and
    tag columns. ``label_column`` is not used: the tags are ``tags_column`` (a CoNLL file's last column)."""

    tokens_column: str = field(default="tokens", metadata={"help": "Column (JSON key) with each sentence's words."})
    tags_column: str = field(
        default="tags", metadata={"help": "Column (JSON key) with each sentence's tags ('ner_tags' on Hub CoNLL-2003)."}
    )
    tag_names: list[str] | None = field(
        default=None, metadata={"help": "The tag of each integer id, for integer tags without ClassLabel names."}
    )
    tag_scheme: str | None = field(
        default=None,
        metadata={"help": "Leave unset to detect from the train tags.", "choices": ["IOB1", "BIO", "BIOES", "IO"]},
    )
    max_seq_length: int | None = field(
        default=256,
        metadata={"help": "Longest window in tokens (capped at the model's limit); longer sentences are split. Batches pad dynamically."},
    )
    stride: int = field(
        default=32,
        metadata={"help": "Tokens shared by consecutive windows of a long sentence; each word is predicted once, "
                          "in the window where it has the most context."},
    )
    label_all_subtokens: bool = field(
        default=False,
        metadata={"help": "Train on every sub-token of a word (B-X becomes I-X after the first) instead of the first only."},
    )
    loss_per_token: bool = field(
        default=True,
        metadata={"help": "Every labelled token weighs the same in training: a batch's summed token loss is divided "
                          "by the training set's mean labelled tokens per batch, not by its own count (false: "
                          "transformers' per-batch mean, which over-weighs the tokens of batches of short "
                          "sentences, as length-grouped batches make systematic)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_seq_length is not None and self.max_seq_length < 8:
            raise ValueError(f"--max_seq_length must be at least 8, got {self.max_seq_length}")
        if self.stride < 0:
            raise ValueError(f"--stride must be >= 0, got {self.stride}")
        if self.label_column != "label":
            raise ValueError(f"--label_column is not used by token classification (got {self.label_column!r}): "
                             "the tags are --tags_column")
        if self.max_seq_length is not None and self.stride > self.max_seq_length // 2:
            raise ValueError(
                f"--stride {self.stride} must be at most half of --max_seq_length ({self.max_seq_length}): "
                "windows would advance by only a few tokens"
            )


@dataclass
class ImageDataArguments(DataArguments):
    """Image classification: a Hub dataset, a local image folder, or csv / jsonl / parquet files of image paths
    (relative to the file's folder) and labels; single-label or multi-label."""

    image_folder: str | None = field(
        default=None,
        metadata={"help": "Local folder of <class>/<image> (or {train,val,test}/<class>/<image>); the short name "
                          "'sklearn-digits' exports scikit-learn's bundled digits into the ftlib cache and uses them."},
    )
    image_column: str = field(
        default="image", metadata={"help": "Column with the images (a Hub Image feature) or image paths."}
    )
    id_column: str | None = field(
        default=None, metadata={"help": "Column identifying rows in predictions (default: the image path, else the row number)."}
    )
    multi_label: bool = field(
        default=False,
        metadata={"help": "Several labels per image (a list, or strings split at --label_separator); sigmoid outputs. "
                          "Lists and --label_separator imply it."},
    )
    label_separator: str | None = field(
        default=None, metadata={"help": "Multi-label from strings like 'cat;dog': the separator (';')."}
    )
    tune_thresholds: bool | None = tune_thresholds_field()
    image_size: int | None = field(
        default=None,
        metadata={"help": "Train and predict at this square size instead of the checkpoint's (its resize-to-crop ratio "
                          "kept); the saved image processor is changed to match. ViT-style models need their own size."},
    )
    augmentation: str = field(
        default="light",
        metadata={"help": "Training augmentation preset: none, light (random resized crop + flip), standard (+ rotation, "
                          "colour jitter), strong (+ TrivialAugment, random erasing). Evaluation is resize + centre crop.",
                  "choices": ["none", "light", "standard", "strong"]},
    )
    augmentation_knobs: str | None = field(
        default=None,
        metadata={"help": 'JSON object (a mapping in YAML) overriding the preset\'s knobs, e.g. \'{"hflip": 0.0, '
                          '"crop_scale": [0.5, 1.0]}\'. Knobs: crop_scale, crop_ratio, hflip, vflip, rotation, color_jitter, '
                          "auto_augment (trivial / rand), rand_magnitude, erasing, crop_pct (evaluation too)."},
    )
    mixup_alpha: float = field(default=0.0, metadata={"help": "MixUp Beta(alpha, alpha) on training batches (0 = off)."})
    cutmix_alpha: float = field(default=0.0, metadata={"help": "CutMix Beta(alpha, alpha) on training batches (0 = off)."})
    mixup_prob: float = field(
        default=1.0, metadata={"help": "Share of training batches mixed when MixUp or CutMix is on (one of the two at random)."}
    )
    check_images: bool = field(
        default=True,
        metadata={"help": "Decode every image once before training, so a bad file fails early, named. Off: it fails "
                          "when a worker reaches it (still named)."},
    )
    skip_corrupt_images: bool = field(
        default=False, metadata={"help": "Drop unreadable or truncated images (counted and listed in the log) instead of failing."}
    )

    def _source_fields(self) -> tuple[str, ...]:
        return ("dataset_name", "train_file", "image_folder")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_knobs(self.augmentation, self.knobs)
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ValueError(f"--mixup_alpha and --cutmix_alpha must be >= 0, got {self.mixup_alpha}, {self.cutmix_alpha}")
        if not 0.0 <= self.mixup_prob <= 1.0:
            raise ValueError(f"--mixup_prob must be in [0, 1], got {self.mixup_prob}")
        refuse_without(self, "--mixup_alpha or --cutmix_alpha", self.mixing, ("mixup_prob",))
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"--image_size must be at least 8, got {self.image_size}")
        if self.skip_corrupt_images and not self.check_images:
            raise ValueError("--skip_corrupt_images needs --check_images (the scan is what finds them)")

    @property
    def knobs(self) -> dict:
        """The augmentation knob overrides as a dict."""
        if not self.augmentation_knobs:
            return {}
        try:
            knobs = json.loads(self.augmentation_knobs)
        except json.JSONDecodeError as err:
            raise ValueError(f"--augmentation_knobs is not valid JSON: {err}") from None
        if not isinstance(knobs, dict):
            raise ValueError(f"--augmentation_knobs must be a JSON object, got {self.augmentation_knobs!r}")  # noqa: TRY004
        return knobs

    @property
    def problem_type(self) -> str | None:
        """Multi-label when asked; otherwise detected from the label column."""
        return "multi_label_classification" if self.multi_label else None

    @property
    def mixing(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0
