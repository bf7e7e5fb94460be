"""ftlib: fine-tuning strategies for Hugging Face Transformers, as importable helpers.

    from ftlib import FineTuneArguments, FtTrainer, prepare_model

    ft = FineTuneArguments(layer_decay=0.8, head_learning_rate=1e-3, freeze_embeddings=True)
    model, anatomy = prepare_model(model, ft)                 # LoRA + freezing
    trainer = FtTrainer(model=model, args=training_args, ft_args=ft, anatomy=anatomy, ...)
    trainer.train()                                           # parameter groups built from the anatomy
"""

import importlib

# Imported on first use, so that light commands (ftlib-verify) do not pay for torch and transformers.
_EXPORTS = {
    "ftlib.strategy.anatomy": ["Anatomy", "AnatomyError", "find_anatomy"],
    "ftlib.data.arguments": ["DataArguments"],
    "ftlib.strategy.arguments": ["FineTuneArguments"],
    "ftlib.training.arguments": ["ModelArguments"],
    "ftlib.tasks.text_classification": ["TextDataArguments"],
    "ftlib.run.cli": ["ConfigError", "parse_args"],
    "ftlib.strategy.freezing": ["apply_freezing", "count_parameters", "freeze_patterns", "layers_to_freeze", "set_trainable"],
    "ftlib.run.hp_search": ["search_hyperparameters", "search_space"],
    "ftlib.strategy.lora": ["apply_lora", "default_target_modules", "save_lora"],
    "ftlib.run.lr_find": ["LRFindResult", "lr_find", "plot_lr_find"],
    "ftlib.strategy.optim": ["build_param_groups", "format_group_table", "layer_learning_rates", "resolve_optimizer"],
    "ftlib.strategy.small_data": ["WeightAveragingCallback", "budget_epochs", "reinit_top_blocks"],
    "ftlib.run.head_only": ["choose_model", "compare_head_only"],
    "ftlib.training.trainer": ["FtTrainer", "class_weights_from_labels", "prepare_model"],
    "ftlib.strategy.unfreeze": ["GradualUnfreezeCallback", "unfreeze_stages"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'ftlib' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = sorted(_WHERE)  # noqa: PLE0605 - a list, built from the lazy-export table
