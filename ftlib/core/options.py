"""Small helpers for argument dataclasses: a choice's name, flags that act only together with another."""

from __future__ import annotations

from dataclasses import fields


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
