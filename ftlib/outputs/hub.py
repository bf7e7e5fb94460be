"""Model card and Hub push: the exact folder to upload, a quality gate, tokens kept out of every file.

Recipes push once, at the end, after evaluation (Trainer's own ``push_to_hub`` would push checkpoints
during training, before the quality gate could look at the final metric). The token comes from
``--hub_token``, ``HF_TOKEN`` or ``hf auth login``; it is taken off ``TrainingArguments``
before anything is saved, and never printed.

Fail fast, push later: :func:`check_push_access` runs at the start of a run (token, offline mode, the Hub
reachable, write access to the namespace), and a push that fails at the end anyway says where the verified
output is and the command that pushes it later:

    ftlib-push OUTPUT_DIR --hub_model_id me/name [--hub_revision v1] [--hub_private_repo] [--push_min_metric 0.9]

uploads a finished output directory: the same files and the same quality gate as ``--push_to_hub``, and
only when the directory matches its manifest.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import math
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftlib.outputs.integrity import MANIFEST, verify_manifest
from ftlib.tasks.metrics import eval_key

logger = logging.getLogger(__name__)
TOKENS_PAGE = "https://huggingface.co/settings/tokens"


class HubPushError(RuntimeError):
    """A push that cannot happen, or did not: the message names the problem and the fix."""


class HubOfflineError(HubPushError):
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set: nothing can reach the Hub."""


class HubTokenError(HubPushError):
    """No token, or one the Hub refuses."""


class HubUnreachableError(HubPushError):
    """The Hub did not answer (network, proxy, ``HF_ENDPOINT``, or a server error)."""


class HubPermissionError(HubPushError):
    """The token may not write to the repository's namespace."""


class UnverifiedOutputError(HubPushError):
    """The directory to push does not match its manifest (or has none)."""


class PushFailedError(HubPushError):
    """The upload itself failed; the local output is kept."""

# What a pushed repo never gets: training state, optimizer moments, pickles, logs.
# Local-only: resume state, pickle-capable files (the report's predictions.npz holds plain arrays, but the Hub
# cannot tell), the run lock, the cross-validation's fold folders (cv/: each fold's logs and metrics; the summary,
# cv_results.json, and the out-of-fold predictions are pushed), the hyperparameter search's study and trial logs
# (hp_search/; its summary, hp_search.json, is pushed). ``ftlib-report`` needs predictions.npz; the pushed report
# has its figures.
NOT_PUSHED = ("checkpoint-*", "runs", "cv", "hp_search", "linear_probe", "*.pt", "*.pth", "*.bin", "*.npz", "trainer_state.json",
              ".ftlib-*", "*.lock")


@dataclass
class HubSettings:
    push: bool
    repo_id: str | None
    private: bool | None
    revision: str | None
    token: str | None

    def __repr__(self) -> str:  # never show the token, even in a traceback or a debugger
        return f"HubSettings(push={self.push}, repo_id={self.repo_id!r}, private={self.private}, revision={self.revision!r})"


def take_hub_settings(training_args) -> HubSettings:
    """Move the Hub flags off ``TrainingArguments`` so Trainer neither pushes mid-run nor saves the token
    into ``training_args.bin``; the recipe pushes at the end with :func:`push_output`."""
    settings = HubSettings(
        push=bool(training_args.push_to_hub),
        repo_id=training_args.hub_model_id or (Path(training_args.output_dir).name if training_args.push_to_hub else None),
        private=training_args.hub_private_repo,
        revision=training_args.hub_revision,
        token=training_args.hub_token,
    )
    training_args.push_to_hub = False
    training_args.hub_token = None
    return settings


def files_to_push(output_dir: str | Path) -> list[Path]:
    """The files of ``output_dir`` that make up the published model, sorted, relative to it."""
    root = Path(output_dir)
    chosen = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_dir() or any(fnmatch.fnmatch(part, pat) for part in rel.parts for pat in NOT_PUSHED):
            continue
        chosen.append(rel)
    return chosen



def quality_gate(metrics: dict[str, float], metric: str, threshold: float | None, greater_is_better: bool) -> None:
    """Raise when the evaluation metric is worse than ``threshold`` (below it, or above it for a loss)."""
    if threshold is None:
        return
    key = eval_key(metric)
    if key not in metrics:
        raise ValueError(f"--push_min_metric: no '{key}' among the evaluation results ({', '.join(sorted(metrics))})")
    value = metrics[key]
    worse = value < threshold if greater_is_better else value > threshold
    if worse or math.isnan(value):  # NaN never passes
        relation = "below" if greater_is_better else "above"
        raise ValueError(f"not pushing: {key} = {value:.4f} is {relation} the quality gate --push_min_metric={threshold}")


def push_command(output_dir: str | Path, settings: HubSettings, min_metric: float | None = None) -> str:
    """The ``ftlib-push`` command line that pushes ``output_dir`` as ``settings`` say (never with the token)."""
    parts = ["ftlib-push", str(Path(output_dir).resolve()), "--hub_model_id", settings.repo_id or Path(output_dir).name]
    if settings.revision:
        parts += ["--hub_revision", settings.revision]
    if settings.private:
        parts += ["--hub_private_repo"]
    if min_metric is not None:
        parts += ["--push_min_metric", repr(min_metric)]
    return shlex.join(parts)


def check_push_access(settings: HubSettings, later: str | None = None) -> str:
    """Everything about a push that can be checked before training: a token is available, the Hub is not
    switched off (``HF_HUB_OFFLINE``), it answers, and the token may write to the repository's namespace
    (``whoami``: the user, their organizations and roles, the token's role or fine-grained scopes).
    Raises a :class:`HubPushError` naming the problem and the fix; returns the account name.
    ``later``: the ``ftlib-push`` command to suggest for pushing after training instead."""
    import huggingface_hub
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    instead = f"; or train without --push_to_hub and push the finished output later with `{later}`" if later else ""
    if constants.is_offline_mode():
        raise HubOfflineError(
            "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, so nothing can reach the Hub to push "
            f"{settings.repo_id}: unset it for this command{instead}"
        )
    if not (settings.token or huggingface_hub.get_token()):
        raise HubTokenError(
            f"pushing to {settings.repo_id} needs a Hugging Face token with write access, and none is set: "
            f"create one at {TOKENS_PAGE}, then `hf auth login` or set HF_TOKEN{instead}"
        )
    try:
        info = HfApi(token=settings.token).whoami()
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", None)
        if status == 401:
            raise HubTokenError(
                f"the Hub refused the token (401: invalid, revoked or expired), so {settings.repo_id} cannot be "
                f"pushed: create a new write token at {TOKENS_PAGE}, then `hf auth login` or set HF_TOKEN "
                f"(HF_TOKEN takes precedence over a saved login){instead}"
            ) from None
        raise HubUnreachableError(
            f"the Hub at {constants.ENDPOINT} answered {status} to whoami ({_first_line(err)}): try again later"
            f"{instead}"
        ) from err
    except Exception as err:  # connection refused, DNS, timeout, proxy: the transport's own error types
        raise HubUnreachableError(
            f"cannot reach the Hub at {constants.ENDPOINT} to push {settings.repo_id} "
            f"({type(err).__name__}: {_first_line(err)}): check the network, a proxy (HTTPS_PROXY) or "
            f"HF_ENDPOINT{instead}"
        ) from err
    problem = write_access_problem(info, settings.repo_id)
    if problem:
        raise HubPermissionError(f"{problem}{instead}")
    return str(info.get("name"))


def write_access_problem(info: dict[str, Any], repo_id: str) -> str | None:
    """Why the account and token of ``info`` (a ``whoami`` answer) cannot write to ``repo_id``'s namespace,
    or None when they can (or when the answer does not say)."""
    user = info.get("name")
    namespace, _, name = repo_id.rpartition("/")
    namespace = namespace or user
    name = name or repo_id
    orgs = {org.get("name"): org.get("roleInOrg") for org in info.get("orgs") or []}
    if info.get("type", "user") == "user" and namespace not in (user, *orgs):
        member_of = f" (a member of {', '.join(sorted(map(str, orgs)))})" if orgs else ""
        return (f"the token belongs to '{user}'{member_of}, who cannot write to '{namespace}': push to "
                f"--hub_model_id {user}/{name}, or use a token of a member of '{namespace}'")
    if orgs.get(namespace) == "read":
        return (f"'{user}' has the read role in the organization '{namespace}': ask one of its admins for the "
                f"write or contributor role, or push to --hub_model_id {user}/{name}")
    token = (info.get("auth") or {}).get("accessToken") or {}
    label = f"the token '{token['displayName']}'" if token.get("displayName") else "the token"
    if token.get("role") == "read":
        return (f"{label} is read-only: create a token with write access at {TOKENS_PAGE}, then "
                "`hf auth login` or set HF_TOKEN")
    if token.get("role") == "fineGrained":
        full = f"{namespace}/{name}"
        for scope in (token.get("fineGrained") or {}).get("scoped") or []:
            entity = scope.get("entity") or {}
            mine = entity.get("name") == namespace and entity.get("type") in ("user", "org")
            if "repo.write" in (scope.get("permissions") or []) and (mine or (entity.get("name") == full)):
                return None
        return (f"{label} (fine-grained) has no write access to repositories under '{namespace}': edit it at "
                f"{TOKENS_PAGE} and allow 'Write access to contents/settings of all repos' under '{namespace}' "
                f"(or to {full})")
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no message"


def push_or_explain(
    output_dir: str | Path, settings: HubSettings, min_metric: float | None = None,
    commit_message: str = "Upload fine-tuned model",
) -> str:
    """:func:`push_output`; when it fails, log one line saying whether the local output is complete and
    verified, where it is and the command that pushes it later, and raise :class:`PushFailedError`."""
    try:
        return push_output(output_dir, settings, commit_message)
    except Exception as err:
        problems = verify_manifest(output_dir)
        state = ("complete and verified against its manifest" if not problems
                 else f"NOT verified ({len(problems)} differences from its manifest: run ftlib-verify on it)")
        line = (f"push to {settings.repo_id} failed ({type(err).__name__}: {_first_line(err)}); the output in "
                f"{Path(output_dir).resolve()} is {state}; push it later with: "
                f"{push_command(output_dir, settings, min_metric)}")
        logger.error(line)
        raise PushFailedError(line) from err


def push_output(output_dir: str | Path, settings: HubSettings, commit_message: str = "Upload fine-tuned model") -> str:
    """Create the repo (private if asked), the branch when a revision is given, and upload the files of
    :func:`files_to_push`. Returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=settings.token)
    api.create_repo(settings.repo_id, private=settings.private, exist_ok=True, repo_type="model")
    if settings.revision and settings.revision != "main":
        api.create_branch(settings.repo_id, branch=settings.revision, exist_ok=True)
    files = [str(p) for p in files_to_push(output_dir)]
    commit = api.upload_folder(
        repo_id=settings.repo_id,
        folder_path=str(output_dir),
        revision=settings.revision,
        allow_patterns=files,
        commit_message=commit_message,
    )
    logger.info("pushed %d files to %s", len(files), settings.repo_id)
    return str(getattr(commit, "commit_url", commit))


def push_directory(
    output_dir: str | Path, settings: HubSettings, min_metric: float | None = None, metric: str | None = None,
    commit_message: str = "Upload fine-tuned model",
) -> str:
    """Push a finished output directory as ``--push_to_hub`` would have at the end of its run: only when it
    matches its manifest, behind the same quality gate (on ``all_results.json``, with the metric and direction
    the run recorded in ``ftlib_strategy.json`` unless ``metric`` is given), after :func:`check_push_access`.
    Returns the commit URL."""
    root = Path(output_dir)
    problems = verify_manifest(root) if root.is_dir() else [f"{root} is not a directory"]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise UnverifiedOutputError(
            f"not pushing {root}: it does not match its manifest {MANIFEST} ({shown}). Push only what a run "
            f"finished and verified: restore the files or train again (`ftlib-verify {root}` lists every difference)"
        )
    results = _read_json(root / "all_results.json")
    recorded = _read_json(root / "ftlib_strategy.json")
    chosen = metric or recorded.get("metric_for_best_model") or "loss"
    greater = recorded.get("greater_is_better") if chosen == recorded.get("metric_for_best_model") else None
    quality_gate(results, chosen, min_metric, not chosen.endswith("loss") if greater is None else greater)
    check_push_access(settings)
    return push_or_explain(root, settings, min_metric, commit_message)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def main(argv: list[str] | None = None) -> int:
    """``ftlib-push``: upload a finished output directory (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="ftlib-push",
        description="Push a finished ftlib output directory to the Hub: the files and quality gate of --push_to_hub, "
        "refusing a directory that does not match its manifest. The token comes from HF_TOKEN or `hf auth login`.",
    )
    parser.add_argument("directory")
    parser.add_argument("--hub_model_id", help="the repository, user/name or org/name (default: the directory's name)")
    parser.add_argument("--hub_revision", help="the branch to push to (created when missing; default: main)")
    parser.add_argument("--hub_private_repo", action="store_true", default=None, help="create the repository private")
    parser.add_argument("--hub_token", help="a token (better: HF_TOKEN or `hf auth login`, which keep it off the command line)")
    parser.add_argument("--push_min_metric", type=float, help="quality gate: refuse when the evaluation metric is worse")
    parser.add_argument("--push_metric", help="the metric of the gate (default: the run's metric_for_best_model)")
    parser.add_argument("--commit_message", default="Upload fine-tuned model")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO, stream=sys.stderr)
    settings = HubSettings(push=True, repo_id=args.hub_model_id or Path(args.directory).resolve().name,
                           private=args.hub_private_repo, revision=args.hub_revision, token=args.hub_token)
    try:
        url = push_directory(args.directory, settings, args.push_min_metric, args.push_metric, args.commit_message)
    except PushFailedError:
        return 1  # already explained in one logged line
    except (HubPushError, ValueError) as err:
        print(f"ftlib-push: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(url)
    return 0


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
CARD_FIGURES = {
    "losses.png": "Loss", "metric.png": "Headline metric", "grad_norm.png": "Gradient norm",
    "learning_rates.png": "Learning rate per parameter group", "confusion_matrix.png": "Confusion matrix",
    "class_scores.png": "Per class", "entity_scores.png": "Per entity type", "calibration.png": "Calibration",
    "top_losses.png": "Top losses",
}


def hub_id(name: str | None) -> str | None:
    """``name`` when it can be a Hub repository id (``user/name`` or a canonical ``name``), None for a local path."""
    if not name or Path(name).expanduser().exists() or not HUB_ID.match(name) or name.count("/") > 1:
        return None
    return name


def write_model_card(
    output_dir: str | Path,
    *,
    base_model: str,
    task: str,
    dataset: str,
    metrics: dict[str, Any],
    strategy: dict[str, Any],
    group_table: str = "",
    library: str = "transformers",
    label_names: list[str] | None = None,
    repo_id: str | None = None,
    report: list[str] | None = None,
    sections: list[str] | None = None,
) -> Path:
    """Write ``README.md`` with huggingface_hub's ``ModelCard``: metadata (``model-index`` with the headline
    metrics; ``base_model`` and ``datasets`` only when they are Hub ids), then the data, base checkpoint, headline
    metrics, the report's figures (``report``: paths relative to ``output_dir``), ``sections`` (markdown lines) and
    the strategy in prose.
    Per-class figures are left to the report."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from ftlib.tasks.metrics import per_class_metric

    headline = {k: v for k, v in metrics.items() if k.startswith(("eval_", "test_")) and "runtime" not in k
                and "per_second" not in k and not per_class_metric(k)}
    title = repo_id or Path(output_dir).name
    data_id = hub_id(dataset)
    results = [
        EvalResult(task_type=task, dataset_type=data_id or "local", dataset_name=str(dataset), metric_type=k.split("_", 1)[1],
                   metric_value=float(v), metric_name=k, dataset_split="validation" if k.startswith("eval_") else "test")
        for k, v in headline.items()
        if isinstance(v, (int, float)) and math.isfinite(v) and not k.endswith(("_samples", "_loss", "_epoch"))
    ]
    data = ModelCardData(
        library_name=library, base_model=hub_id(base_model), datasets=[data_id] if data_id else None,
        pipeline_tag=task, tags=["ftlib", "fine-tuned", task], model_name=title, eval_results=results or None,
    )
    lines = [
        f"# {title}",
        "",
        f"`{base_model}` fine-tuned for {task.replace('-', ' ')} on {dataset} with ftlib.",
        "",
    ]
    if label_names:
        lines += [f"Labels: {', '.join(f'`{n}`' for n in label_names)}.", ""]
    lines += ["## Results", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(headline.items())] or ["| (none) | |"]
    if report:
        lines += ["", "## Training report", "", ("Per-class figures, curves and the examples the model gets "
                  "most wrong, from `report/` (regenerate with `ftlib-report DIR`)."), ""]
        for rel in report:
            name = Path(rel).name
            if name.endswith(".png"):
                lines += [f"![{CARD_FIGURES.get(name, name)}]({rel})", ""]
            elif name.endswith(".md"):
                lines += [f"[Top losses (validation)]({rel})", ""]
    if sections:  # more of the run's story, in markdown lines (the hyperparameter search)
        lines += ["", *sections]
    lines += ["", "## Fine-tuning strategy", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in strategy.items()]
    if group_table:
        lines += ["", "Optimizer parameter groups at the start of training:", "", "```", group_table, "```"]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
    path = Path(output_dir) / "README.md"
    card.save(path)
    return path
