"""ftlib: fine-tuning strategies for Hugging Face Transformers, as importable helpers.

    from ftlib import FineTuneArguments, FtTrainer, prepare_model

    ft = FineTuneArguments(layer_decay=0.8, head_learning_rate=1e-3, freeze_embeddings=True)
    model, anatomy = prepare_model(model, ft)                 # LoRA + freezing
    trainer = FtTrainer(model=model, args=training_args, ft_args=ft, anatomy=anatomy, ...)
    trainer.train()                                           # parameter groups built from the anatomy
"""

from ftlib.anatomy import Anatomy, AnatomyError, find_anatomy
from ftlib.args import DataArguments, FineTuneArguments, ModelArguments, TextDataArguments
from ftlib.cli import ConfigError, parse_args
from ftlib.freezing import apply_freezing, count_parameters, freeze_patterns, layers_to_freeze, set_trainable
from ftlib.lora import apply_lora, default_target_modules, save_lora
from ftlib.optim import build_param_groups, format_group_table, layer_learning_rates, resolve_optimizer
from ftlib.trainer import FtTrainer, class_weights_from_labels, prepare_model
from ftlib.unfreeze import GradualUnfreezeCallback, unfreeze_stages

__version__ = "0.1.0"

__all__ = [
    "Anatomy",
    "AnatomyError",
    "ConfigError",
    "DataArguments",
    "FineTuneArguments",
    "FtTrainer",
    "GradualUnfreezeCallback",
    "ModelArguments",
    "TextDataArguments",
    "apply_freezing",
    "apply_lora",
    "build_param_groups",
    "class_weights_from_labels",
    "count_parameters",
    "default_target_modules",
    "find_anatomy",
    "format_group_table",
    "freeze_patterns",
    "layer_learning_rates",
    "layers_to_freeze",
    "parse_args",
    "prepare_model",
    "resolve_optimizer",
    "save_lora",
    "set_trainable",
    "unfreeze_stages",
]
