"""Which checkpoint a run starts from (every recipe parses these with its own data arguments)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field


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

    def __post_init__(self) -> None:
        if not self.model_name_or_path:
            raise ValueError("--model_name_or_path is required")
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
