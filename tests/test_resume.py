"""Kill and resume: a real recipe subprocess SIGKILLed mid-training ends, once resumed, exactly where an
uninterrupted run ends (fp32 weights bit for bit, trainer_state.json, the order of training samples).

Every run is ``python recipes/text_cls.py ...`` with the test hooks on PYTHONPATH (tests/conftest.py,
``RECIPE_HOOKS``): they record a fingerprint of each training micro-batch and stop the process at a chosen
point, where the test kills it. Dropout stays on (the tiny BERT's 0.1, LoRA's 0.1), the data spans several
epochs of the recipe's default length-grouped sampler, so RNG and sampler state must both survive the kill.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
GOOD = ["good", "great", "fine", "nice", "superb", "lovely", "warm", "clever"]
BAD = ["bad", "awful", "poor", "dull", "boring", "ugly", "cold", "dumb"]


def sentiment_csv(path: Path, n: int, offset: int = 0) -> Path:
    """``n`` distinct rows of varying length (so length grouping has something to group), labels alternating."""
    lines = ["text,label"]
    for j in range(offset, offset + n):
        word = (GOOD if j % 2 == 0 else BAD)[(j // 2) % 8]
        lines.append(f'"a {word} film, take {j}{" really" * (j % 3)}",{"pos" if j % 2 == 0 else "neg"}')
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("resume-data")
    return sentiment_csv(folder / "train.csv", 16), sentiment_csv(folder / "val.csv", 8, offset=100)


def recipe_command(model_dir: Path, data: tuple[Path, Path], out: Path, *extra) -> list[str]:
    """16 rows, batch 4: 4 optimizer steps an epoch, 10 steps in all, a checkpoint every 2 steps."""
    train, val = data
    return [sys.executable, "recipes/text_cls.py", "--model_name_or_path", model_dir, "--train_file", train,
            "--validation_file", val, "--output_dir", out, "--use_cpu", "true", "--max_steps", "10",
            "--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "no", "--logging_steps", "1",
            "--per_device_train_batch_size", "4", "--learning_rate", "1e-3", "--seed", "3", "--disable_tqdm", "true",
            "--dataloader_pin_memory", "false", *extra]


def weights(folder: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(folder / name))


def update_difference(a: Path, b: Path, initial: Path, name: str = "model.safetensors") -> tuple[float, float]:
    """``(max |a - b|, ||a - b|| / ||b - initial||)`` over all weights: the second compares the two runs'
    disagreement with how far training moved the weights at all (``initial``: the base checkpoint)."""
    wa, wb, w0 = weights(a, name), weights(b, name), weights(initial, "model.safetensors")
    base = {k: w0[k.removeprefix("bert.")] for k in wb if k.removeprefix("bert.") in w0}
    base = {k: v for k, v in base.items() if v.shape == wb[k].shape}
    diff = torch.sqrt(sum(((wa[k] - wb[k]) ** 2).sum() for k in wb)).item()
    moved = torch.sqrt(sum(((wb[k] - base[k]) ** 2).sum() for k in base)).item()
    return max((wa[k] - wb[k]).abs().max().item() for k in wb), diff / moved


def comparable_state(folder: Path) -> dict:
    """trainer_state.json without timings, and without the final ``train_loss``: Trainer averages that over
    the steps of the last ``train()`` call only (checked separately)."""
    state = json.loads((folder / "trainer_state.json").read_text())
    state["log_history"] = [
        {k: v for k, v in entry.items() if "runtime" not in k and "per_second" not in k and k != "train_loss"}
        for entry in state["log_history"]
    ]
    return state


def assert_same_result(ref: Path, resumed: Path, weight_file: str, resumed_from: int) -> None:
    """Weights equal bit for bit, trainer_state equal, and the resumed run's train_loss is the mean of the
    uninterrupted run's per-step losses after the checkpoint."""
    a, b = weights(ref, weight_file), weights(resumed, weight_file)
    assert a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"max |difference| in weights after resume: {diff}")  # the figure (pytest -s)
    unequal = [k for k in a if not torch.equal(a[k], b[k])]
    assert not unequal, f"{len(unequal)} tensors differ (max |diff| {diff:.3g}), e.g. {unequal[:3]}"
    ref_state, resumed_state = comparable_state(ref), comparable_state(resumed)
    assert resumed_state == ref_state
    losses = [e["loss"] for e in ref_state["log_history"] if "loss" in e and e["step"] > resumed_from]
    train_loss = json.loads((resumed / "train_results.json").read_text())["train_loss"]
    assert train_loss == pytest.approx(sum(losses) / len(losses), rel=1e-6)
    ref_results, resumed_results = (json.loads((d / "all_results.json").read_text()) for d in (ref, resumed))
    evals = {k: v for k, v in ref_results.items() if k.startswith("eval_") and "runtime" not in k and "per_second" not in k}
    assert evals and all(resumed_results[k] == v for k, v in evals.items())


def assert_same_order(ref_batches: list[dict], *parts: list[dict]) -> None:
    """Each part's micro-batches (a killed run, then its resumptions) are the uninterrupted run's at the same
    step and micro-batch: same rows, same order."""
    by_position = {(b["step"], b["micro"]): b["rows"] for b in ref_batches}
    for part in parts:
        assert part, "a run recorded no batches"
        for batch in part:
            assert batch["rows"] == by_position[batch["step"], batch["micro"]], f"step {batch['step']} micro {batch['micro']}"


@pytest.mark.slow
def test_plain_kill_resume_past_a_half_written_checkpoint(tiny_bert_dir, data, tmp_path, recipe_process):
    """Killed mid-epoch 2 (after checkpoint-6), auto-resumed and killed again while checkpoint-8 is half
    written: the next auto-resume skips the broken checkpoint-8, resumes from checkpoint-6, and ends equal."""
    ref, out = tmp_path / "ref", tmp_path / "out"
    uninterrupted = recipe_process(recipe_command(tiny_bert_dir, data, ref), tmp_path / "rec-ref")
    uninterrupted.wait()
    ref_batches = uninterrupted.batches()
    assert [(b["step"], b["micro"]) for b in ref_batches] == [(s, 0) for s in range(1, 11)]
    epoch = [sorted(row for b in ref_batches[e * 4 : e * 4 + 4] for row in b["rows"]) for e in range(2)]
    assert len(set(epoch[0])) == 16 and epoch[0] == epoch[1]  # every row once an epoch (the fingerprints see rows)
    assert [b["rows"] for b in ref_batches[:4]] != [b["rows"] for b in ref_batches[4:8]]  # reshuffled each epoch

    first = recipe_process(recipe_command(tiny_bert_dir, data, out), tmp_path / "rec-1", pause="step:7")
    print(f"killed plain: {first.kill_when_paused()}")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]  # save_total_limit 2
    assert not (out / "model.safetensors").exists()

    second = recipe_process(recipe_command(tiny_bert_dir, data, out), tmp_path / "rec-2", pause="midsave:8")
    print(f"killed plain, resumed: {second.kill_when_paused()}")
    assert "resuming from" in second.log() and "checkpoint-6" in second.log()
    half = out / "checkpoint-8"
    assert (half / "model.safetensors").is_file() and not (half / "trainer_state.json").exists()
    resumed_from = weights(out / "checkpoint-6", "model.safetensors")

    third = recipe_process(recipe_command(tiny_bert_dir, data, out), tmp_path / "rec-3")
    log = third.wait()
    assert "skipping" in log and "checkpoint-8" in log and "resuming from" in log
    assert [b["step"] for b in third.batches()] == [7, 8, 9, 10]
    assert_same_result(ref, out, "model.safetensors", resumed_from=6)
    assert_same_order(ref_batches, first.batches(), second.batches(), third.batches())
    # resuming did train: the final weights moved away from the checkpoint the run resumed from
    assert not torch.equal(resumed_from["classifier.weight"], weights(out, "model.safetensors")["classifier.weight"])


STRATEGIES = {
    # name: (extra flags, pause point, checkpoint resumed from, weight file, explicit --resume_from_checkpoint)
    # killed between the two micro-batches of step 6; resumed explicitly from the epoch-boundary checkpoint-4
    "frozen lower block + layer decay + accumulation 2": (
        ["--freeze_lower_blocks", "1", "--layer_decay", "0.5", "--per_device_train_batch_size", "2",
         "--gradient_accumulation_steps", "2"], "step:6:1", 4, "model.safetensors", True),
    # stages: head for steps 1-3, + top block for 4-6, + lower block and embeddings from 7; killed in step 5,
    # resumed from checkpoint-4: between the two unfreezing steps
    "gradual unfreezing": (["--gradual_unfreeze", "3", "--gradual_unfreeze_unit", "step"], "step:5", 4,
                           "model.safetensors", False),
    "lora": (["--lora", "true"], "step:7", 6, "adapter_model.safetensors", False),
}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_strategy_kill_resume(strategy, tiny_bert_dir, data, tmp_path, recipe_process):
    flags, pause, resumed_from, weight_file, explicit = STRATEGIES[strategy]
    ref, out = tmp_path / "ref", tmp_path / "out"
    uninterrupted = recipe_process(recipe_command(tiny_bert_dir, data, ref, *flags), tmp_path / "rec-ref")
    uninterrupted.wait()

    killed = recipe_process(recipe_command(tiny_bert_dir, data, out, *flags), tmp_path / "rec-1", pause=pause)
    print(f"killed {strategy}: {killed.kill_when_paused()}")
    checkpoint = out / f"checkpoint-{resumed_from}"
    at_checkpoint = weights(checkpoint, weight_file)
    resume_flags = ["--resume_from_checkpoint", checkpoint] if explicit else []
    resumed = recipe_process(recipe_command(tiny_bert_dir, data, out, *flags, *resume_flags), tmp_path / "rec-2")
    log = resumed.wait()
    assert explicit or f"resuming from {checkpoint}" in log
    assert resumed.batches()[0]["step"] == resumed_from + 1
    assert_same_result(ref, out, weight_file, resumed_from)
    assert_same_order(uninterrupted.batches(), killed.batches(), resumed.batches())

    final = weights(out, weight_file)
    assert any(not torch.equal(final[k], at_checkpoint[k]) for k in final)  # the resumed run trained
    initial = load_file(str(tiny_bert_dir / "model.safetensors"))
    if "frozen" in strategy:
        # the frozen block and the embeddings are the pretrained ones, bit for bit, after the resume too
        frozen = [k for k in final if k.startswith(("bert.embeddings.", "bert.encoder.layer.0."))]
        assert frozen and all(torch.equal(final[k], initial[k.removeprefix("bert.")]) for k in frozen)
        key = "encoder.layer.1.output.dense.weight"
        assert not torch.equal(final[f"bert.{key}"], initial[key])
    if strategy == "gradual unfreezing":
        state = json.loads((out / "trainer_state.json").read_text())
        assert state["stateful_callbacks"]["GradualUnfreezeCallback"]["attributes"]["unfrozen_stages"] == 3
        # checkpoint-4 (stage 2) kept the lower block as loaded; the end (stage 3) trained it
        key = "encoder.layer.0.output.dense.weight"
        assert torch.equal(at_checkpoint[f"bert.{key}"], initial[key])
        assert not torch.equal(final[f"bert.{key}"], initial[key])


def test_last_complete_checkpoint_skips_half_written_ones(tmp_path):
    """Trainer writes a checkpoint in place, trainer_state.json last: a folder without it (or with a truncated
    one) is a save that was killed, and resuming from it would fail; with several processes, one without every
    rank's RNG state would resume inexactly."""
    from ftlib.run.output_dir import last_complete_checkpoint, prepare_output_dir

    for step, state in ((4, '{"global_step": 4}'), (6, '{"global_step": 6}'), (8, '{"global_st'), (10, None)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"weights")
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-6")
    assert prepare_output_dir(tmp_path) == str(tmp_path / "checkpoint-6")
    assert prepare_output_dir(tmp_path, resume_from_checkpoint=True) == str(tmp_path / "checkpoint-6")
    # two processes: rank 0 wrote the state of checkpoint-6, rank 1's RNG state never came
    (tmp_path / "checkpoint-4" / "rng_state_0.pth").write_bytes(b"rng")
    (tmp_path / "checkpoint-4" / "rng_state_1.pth").write_bytes(b"rng")
    (tmp_path / "checkpoint-6" / "rng_state_0.pth").write_bytes(b"rng")
    assert last_complete_checkpoint(tmp_path, world_size=2) == str(tmp_path / "checkpoint-4")
    assert prepare_output_dir(tmp_path, world_size=2) == str(tmp_path / "checkpoint-4")
    for step in (4, 6):
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").unlink()
    assert last_complete_checkpoint(tmp_path) is None
    with pytest.raises(ValueError, match=r"no complete checkpoint-\* folder"):
        prepare_output_dir(tmp_path, resume_from_checkpoint=True)


def test_length_grouped_order_depends_on_the_epoch_only():
    """Trainer's length-grouped sampler shuffles with the global RNG, so a run resumed in epoch k > 0
    replays epoch 0's order (seen in the kill tests before the fix); FtTrainer's is seeded by seed + epoch."""
    from ftlib.training.trainer import EpochSeededLengthGroupedSampler

    lengths = [5, 9, 3, 7, 8, 2, 6, 4, 10, 1, 12, 11] * 2
    sampler = EpochSeededLengthGroupedSampler(4, lengths=lengths, seed=3)
    torch.manual_seed(0)
    epoch0, epoch1 = list(sampler), list(sampler)  # a full pass moves to the next epoch by itself
    assert sorted(epoch0) == sorted(epoch1) == list(range(len(lengths))) and epoch0 != epoch1
    fresh = EpochSeededLengthGroupedSampler(4, lengths=lengths, seed=3)
    torch.manual_seed(123)  # whatever dropout drew before: the order of an epoch does not change
    torch.rand(1000)
    fresh.set_epoch(1)
    assert list(fresh) == epoch1
    fresh.set_epoch(0)
    assert list(fresh) == epoch0
    assert list(EpochSeededLengthGroupedSampler(4, lengths=lengths, seed=4)) != epoch0



@pytest.mark.slow
def test_kill_at_every_file_of_the_final_save(tiny_bert_dir, data, tmp_path, recipe_process, capsys):
    """Issue 11 item 5: SIGKILLed before each file the final save writes (results, state, model, tokenizer, card,
    report, the manifest and its rename), the output is visibly unfinished (no manifest; ftlib-verify says so in
    one line) and the same command resumes from the last complete checkpoint, redoes the final save, and ends
    with a manifest that verifies and the uninterrupted run's weights, bit for bit."""
    from ftlib.outputs import integrity
    from ftlib.run.output_dir import FINISHED_MARKERS

    ref, out = tmp_path / "ref", tmp_path / "out"
    recipe_process(recipe_command(tiny_bert_dir, data, ref), tmp_path / "rec-ref").wait()
    files = (tmp_path / "rec-ref" / "finalsave.rank0.txt").read_text().splitlines()
    assert files[-2:] == [integrity.MANIFEST_PARTIAL, integrity.MANIFEST]  # written last, then renamed into place
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "all_results.json"} <= set(files)
    assert integrity.main([str(ref)]) == 0
    capsys.readouterr()

    for n in range(1, len(files) + 1):
        killed = recipe_process(recipe_command(tiny_bert_dir, data, out), tmp_path / f"rec-{n}", pause=f"finalsave:{n}")
        where = killed.kill_when_paused()
        assert where == f"before final-save file {n}: {files[n - 1]}"
        if n > 1:  # the previous kill left an unfinished output: this run resumed it from the last checkpoint
            unfinished = any(m in files[: n - 2] for m in FINISHED_MARKERS)
            log = killed.log()
            assert f"resuming from {out / 'checkpoint-10'}" in log
            assert ("holds an unfinished final save" in log) == unfinished, n
        assert not (out / integrity.MANIFEST).exists()
        assert integrity.main([str(out)]) == 1
        printed = capsys.readouterr().out
        assert printed == f"{out}: unfinished (no {integrity.MANIFEST}: the run that wrote it did not finish; " \
                          "rerun the same command to resume it)\n", n

    final = recipe_process(recipe_command(tiny_bert_dir, data, out), tmp_path / "rec-final")
    log = final.wait()
    assert f"holds an unfinished final save (model files but no {integrity.MANIFEST}): resuming from " \
           f"{out / 'checkpoint-10'} and redoing the final save" in log
    assert integrity.verify_manifest(out) == [] and integrity.main([str(out)]) == 0
    assert (tmp_path / "rec-final" / "finalsave.rank0.txt").read_text().splitlines() == files
    a, b = weights(ref, "model.safetensors"), weights(out, "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (out / integrity.MANIFEST_PARTIAL).exists()
