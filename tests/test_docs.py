"""The documentation stays true: the flag reference matches the dataclasses, the README stays a short guide, and
no relative link in the README or docs/ points at a file that is not there."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_LIMIT = 15_000

# [text](target) and ![alt](target); the target ends at whitespace (an optional "title" follows) or ")"
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+[^)]*)?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+).+?\1", re.DOTALL)


def load_flag_reference():
    spec = importlib.util.spec_from_file_location("flag_reference", ROOT / "scripts" / "flag_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def relative_links(markdown: str) -> list[str]:
    """Link targets that name a file of this repository: no scheme, no bare anchor; code is not prose."""
    prose = CODE_SPAN.sub("", FENCE.sub("", markdown))
    targets = []
    for target in LINK.findall(prose):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def documentation_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_flag_reference_is_current():
    from transformers import HfArgumentParser

    flag_reference = load_flag_reference()
    committed = (ROOT / "docs" / "flags.md").read_text(encoding="utf-8")
    assert committed == flag_reference.render(), "docs/flags.md is out of date: run python scripts/flag_reference.py"
    # a parser rewrites its dataclasses' field types in place (``str | None`` -> ``str``); the reference must not
    # depend on whether another test parsed them first in this process
    for entry in flag_reference.ARGUMENT_CLASSES:
        HfArgumentParser(flag_reference.load_class(*entry[:2]))
    assert committed == flag_reference.render()


def test_flag_reference_covers_every_flag_and_check_catches_a_stale_file(tmp_path):
    flag_reference = load_flag_reference()
    text = flag_reference.render()
    from ftlib.strategy.arguments import FineTuneArguments
    from ftlib.tasks.text_classification import TextDataArguments

    for cls in (FineTuneArguments, TextDataArguments):
        assert f"## {cls.__name__}\n" in text
    assert "| `--layer_decay` | `float` | `1.0` | Layer-wise LR decay" in text
    assert "| `--model_name_or_path` | `str` | `required` |" in text
    assert "Choices: `no`, `small`, `yes`." in text  # --compare_head_only's choices
    assert "`--output_dir`" not in text  # TrainingArguments stay in transformers' documentation

    stale = tmp_path / "flags.md"
    stale.write_text(text.replace("Layer-wise LR decay", "Layer decay"), encoding="utf-8")
    assert flag_reference.main(["--check", "--output", str(stale)]) == 1
    assert flag_reference.main(["--check", "--output", str(tmp_path / "missing.md")]) == 1
    assert flag_reference.main(["--output", str(stale)]) == 0
    assert flag_reference.main(["--check", "--output", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == text


def test_readme_is_a_short_guide():
    size = len((ROOT / "README.md").read_text(encoding="utf-8"))
    assert size <= README_LIMIT, f"README.md has {size:,} characters, more than {README_LIMIT:,}: move detail to docs/"


def test_link_finder_reads_markdown_as_written():
    markdown = (
        "See [scaling](docs/scaling.md#fsdp), ![loss](report/losses.png \"title\"), [site](https://x.org/a.md),\n"
        "[here](#recipes), `[not](a/link.md)` and\n```\n[nor](this.md)\n```\n"
    )
    assert relative_links(markdown) == ["docs/scaling.md", "report/losses.png"]


@pytest.mark.parametrize("path", documentation_files(), ids=lambda path: path.relative_to(ROOT).as_posix())
def test_relative_links_point_to_files(path):
    missing = [target for target in relative_links(path.read_text(encoding="utf-8"))
               if not (path.parent / target).exists()]
    assert not missing, f"{path.relative_to(ROOT)} links to missing files: {missing}"
