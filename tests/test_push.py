"""Pushing: fail fast (every pre-flight failure before any data, model or output), say how to push later when
the upload fails at the end, and ``ftlib-push`` for a finished directory. Against the fake Hub API."""

from __future__ import annotations

import json
import logging
import shlex

import httpx2  # huggingface_hub's transport: its errors are what a real connection failure raises
import pytest
from conftest import FakeHfApi
from huggingface_hub.errors import HfHubHTTPError
from test_text_cls import base_argv, run, sentiment_rows, write_csv

from ftlib.outputs import hub
from ftlib.outputs.integrity import MANIFEST, verify_manifest, write_manifest

SECRET = "hf_" + "SeCrEt" * 6


def _connect_error() -> Exception:
    return httpx2.ConnectError("[Errno 111] Connection refused")


def _http_error(status: int) -> Exception:
    request = httpx2.Request("GET", "https://huggingface.co/api/whoami-v2")
    return HfHubHTTPError(f"{status} Client Error", response=httpx2.Response(status, request=request))


def _pushes(calls) -> list[str]:
    return [name for name, _ in calls if name in ("create_repo", "create_branch", "upload_folder")]


# -- pre-flight: each failure before any data, model or output ---------------------------------------------------

PREFLIGHT = {
    # name: (set-up of the fake Hub, extra argv, error class, message pattern, whoami reached)
    "offline": ("offline", [], hub.HubOfflineError, r"HF_HUB_OFFLINE \(or TRANSFORMERS_OFFLINE\) is set.*unset it", False),
    "no token": ("no_token", [], hub.HubTokenError, (r"needs a Hugging Face token with write access, and none is set: "
                 r"create one at https://huggingface.co/settings/tokens, then `hf auth login` or set HF_TOKEN"), False),
    "bad token": ("401", ["--hub_token", SECRET], hub.HubTokenError,
                  r"the Hub refused the token \(401: invalid, revoked or expired\)", True),
    "unreachable": ("connect", [], hub.HubUnreachableError, (r"cannot reach the Hub at https://huggingface.co to push "
                    r"me/x \(ConnectError: \[Errno 111\] Connection refused\): check the network"), True),
    "server error": ("503", [], hub.HubUnreachableError, r"answered 503 to whoami \(503 Client Error\)", True),
    "other namespace": ("", ["--hub_model_id", "someone/x"], hub.HubPermissionError,
                        (r"the token belongs to 'me' \(a member of my-org\), who cannot write to 'someone': "
                        r"push to --hub_model_id me/x"), True),
    "read token": ("read", [], hub.HubPermissionError, r"the token 'ci' is read-only: create a token with write", True),
}


@pytest.mark.parametrize("case", list(PREFLIGHT))
def test_preflight_failure_raises_before_data_model_or_output(case, tmp_path, monkeypatch, fake_hub):
    """The train file and the model do not exist: had anything been loaded first, the error would be theirs."""
    import huggingface_hub

    setup, extra, error, pattern, reached = PREFLIGHT[case]
    if setup == "offline":
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    if setup == "no_token":
        monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    if setup == "connect":
        FakeHfApi.errors["whoami"] = _connect_error()
    if setup in ("401", "503"):
        FakeHfApi.errors["whoami"] = _http_error(int(setup))
    if setup == "read":
        FakeHfApi.identity["auth"]["accessToken"]["role"] = "read"
    out = tmp_path / "out"
    argv = base_argv(tmp_path / "no-such-model", tmp_path / "no-such.csv", out, "--push_to_hub", "true",
                     "--hub_model_id", "me/x", *extra)
    with pytest.raises(error, match=pattern) as raised:
        run(argv)
    message = str(raised.value)
    assert SECRET not in message
    repo = extra[1] if extra[:1] == ["--hub_model_id"] else "me/x"  # the last --hub_model_id wins
    assert message.endswith(f"push the finished output later with `ftlib-push {out.resolve()} --hub_model_id {repo}`")
    assert not out.exists()  # nothing written, not even the directory
    assert [name for name, _ in fake_hub] == (["init", "whoami"] if reached else [])


# -- write access from whoami ----------------------------------------------------------------------------------


def _whoami(role="write", orgs=(("my-org", "write"),), scoped=None) -> dict:
    token = {"displayName": "ci", "role": role}
    if scoped is not None:
        token["fineGrained"] = {"global": ["discussion.write"], "scoped": scoped}
    return {"type": "user", "name": "me", "orgs": [{"name": n, "roleInOrg": r} for n, r in orgs],
            "auth": {"type": "access_token", "accessToken": token}}


def _scope(kind, name, *permissions) -> dict:
    return {"entity": {"type": kind, "name": name}, "permissions": list(permissions)}


@pytest.mark.parametrize(
    ("info", "repo_id", "problem"),
    [
        (_whoami(), "me/x", None),
        (_whoami(), "x", None),  # no namespace: the user's own
        (_whoami(), "my-org/x", None),
        (_whoami(orgs=[("my-org", "contributor")]), "my-org/x", None),
        (_whoami(orgs=[("my-org", "read")]), "my-org/x", "'me' has the read role in the organization 'my-org'"),
        (_whoami(), "other/x", "the token belongs to 'me' (a member of my-org), who cannot write to 'other'"),
        (_whoami(orgs=[]), "other/x", "the token belongs to 'me', who cannot write to 'other'"),
        (_whoami("read"), "x", "the token 'ci' is read-only"),
        (_whoami("fineGrained", scoped=[_scope("user", "me", "repo.content.read", "repo.write")]), "me/x", None),
        (_whoami("fineGrained", scoped=[_scope("org", "my-org", "repo.write")]), "my-org/x", None),
        (_whoami("fineGrained", scoped=[_scope("model", "my-org/x", "repo.write")]), "my-org/x", None),
        (_whoami("fineGrained", scoped=[_scope("model", "my-org/y", "repo.write")]), "my-org/x",
         "the token 'ci' (fine-grained) has no write access to repositories under 'my-org'"),
        (_whoami("fineGrained", scoped=[_scope("user", "me", "repo.content.read")]), "me/x",
         "the token 'ci' (fine-grained) has no write access to repositories under 'me'"),
        (_whoami("fineGrained", scoped=[_scope("org", "my-org", "repo.write")]), "me/x",
         "the token 'ci' (fine-grained) has no write access to repositories under 'me'"),
    ],
)
def test_write_access_problem(info, repo_id, problem):
    found = hub.write_access_problem(info, repo_id)
    assert (found is None) == (problem is None), found
    if problem:
        assert found.startswith(problem), found


# -- the end of a run: the push fails anyway; ftlib-push then uploads the same files -------------------------------


def test_failed_push_says_where_and_how_and_ftlib_push_uploads_the_same_files(tiny_bert_dir, tmp_path, caplog,
                                                                              fake_hub, capsys):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(1))
    out = tmp_path / "out"
    FakeHfApi.errors["upload_folder"] = _connect_error()
    caplog.set_level(logging.INFO)
    with pytest.raises(hub.PushFailedError):
        run(base_argv(tiny_bert_dir, train, out, "--num_train_epochs", "1", "--push_to_hub", "true",
                      "--hub_model_id", "me/sentiment", "--hub_revision", "v1", "--hub_private_repo", "true",
                      "--push_min_metric", "0.0"))
    assert [name for name, _ in fake_hub] == ["init", "whoami", "init", "create_repo", "create_branch", "upload_folder"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    command = f"ftlib-push {out.resolve()} --hub_model_id me/sentiment --hub_revision v1 --hub_private_repo --push_min_metric 0.0"
    assert errors == [
        (f"push to me/sentiment failed (ConnectError: [Errno 111] Connection refused); the output in {out.resolve()} "
        f"is complete and verified against its manifest; push it later with: {command}")
    ]
    assert verify_manifest(out) == []
    attempted = dict(fake_hub)["upload_folder"]
    strategy = json.loads((out / "ftlib_strategy.json").read_text())  # the gate's metric, recorded for ftlib-push
    assert (strategy["metric_for_best_model"], strategy["greater_is_better"]) == ("accuracy", True)

    # the same gate: an accuracy above 1 is never reached, and nothing is asked of the Hub
    fake_hub.clear()
    FakeHfApi.errors.clear()
    args = shlex.split(command)[1:]
    assert hub.main([*args[:-1], "1.01"]) == 1
    assert "ValueError: not pushing: eval_accuracy = " in capsys.readouterr().err and fake_hub == []

    # the command from the line pushes what --push_to_hub tried to
    assert hub.main(args) == 0
    assert capsys.readouterr().out.strip() == "https://hf.co/me/sentiment/commit/abc"
    calls = dict(fake_hub)
    assert [name for name, _ in fake_hub] == ["init", "whoami", "init", "create_repo", "create_branch", "upload_folder"]
    assert calls["create_repo"] == {"repo_id": "me/sentiment", "private": True, "exist_ok": True, "repo_type": "model"}
    assert calls["create_branch"] == {"repo_id": "me/sentiment", "branch": "v1", "exist_ok": True}
    pushed = calls["upload_folder"]
    assert pushed["allow_patterns"] == attempted["allow_patterns"]
    assert (pushed["repo_id"], pushed["revision"], pushed["folder_path"]) == ("me/sentiment", "v1", str(out))
    assert {"model.safetensors", "config.json", "README.md", MANIFEST} <= set(pushed["allow_patterns"])
    assert "trainer_state.json" not in pushed["allow_patterns"] and "training_args.bin" not in pushed["allow_patterns"]
    # the report's figures go with the card that links them; its predictions.npz (every validation text) stays
    figures = {f"report/{p.name}" for p in (out / "report").glob("*.png")}
    assert {"report/losses.png", "report/confusion_matrix.png"} <= figures <= set(pushed["allow_patterns"])
    assert "report/predictions.npz" not in pushed["allow_patterns"] and (out / "report" / "predictions.npz").is_file()
    card = (out / "README.md").read_text()
    assert all(f"]({name})" in card for name in figures)  # every pushed figure is shown, by a link that resolves


# -- ftlib-push on a finished directory ------------------------------------------------------------------------


def _finished_dir(root, eval_loss=0.25):
    """What a run leaves: model files, local-only training state, results, the recorded gate and the manifest."""
    root.mkdir()
    for name in ("model.safetensors", "config.json", "README.md", "training_args.bin", "trainer_state.json"):
        (root / name).write_text(f"{name} contents")
    (root / "checkpoint-2").mkdir()
    (root / "checkpoint-2" / "optimizer.pt").write_text("moments")
    (root / "all_results.json").write_text(json.dumps({"eval_loss": eval_loss, "train_loss": 0.5}))
    (root / "ftlib_strategy.json").write_text(json.dumps({"metric_for_best_model": "loss", "greater_is_better": False}))
    write_manifest(root, published=hub.files_to_push(root))
    return root


def test_ftlib_push_uploads_the_published_files_behind_the_recorded_gate(tmp_path, fake_hub, capsys):
    root = _finished_dir(tmp_path / "my-model")
    assert hub.main([str(root), "--push_min_metric", "0.2"]) == 1  # a loss: lower is better, 0.25 is above 0.2
    assert capsys.readouterr().err.strip() == (
        "ftlib-push: ValueError: not pushing: eval_loss = 0.2500 is above the quality gate --push_min_metric=0.2"
    )
    assert fake_hub == []
    assert hub.main([str(root), "--push_min_metric", "0.3", "--hub_token", SECRET]) == 0
    calls = dict(fake_hub)
    assert calls["init"] == {"token": SECRET}
    assert calls["create_repo"] == {"repo_id": "my-model", "private": None, "exist_ok": True, "repo_type": "model"}
    assert "create_branch" not in calls
    assert sorted(calls["upload_folder"]["allow_patterns"]) == [
        MANIFEST, "README.md", "all_results.json", "config.json", "ftlib_strategy.json", "model.safetensors"
    ]
    assert SECRET not in capsys.readouterr().err


@pytest.mark.parametrize("tamper", ["changed", "extra", "missing", "no manifest"])
def test_ftlib_push_refuses_a_directory_that_does_not_match_its_manifest(tamper, tmp_path, fake_hub, capsys):
    root = _finished_dir(tmp_path / "out")
    if tamper == "changed":
        (root / "model.safetensors").write_text("other weights")
    elif tamper == "extra":
        (root / "notes.txt").write_text("added later")
    elif tamper == "missing":
        (root / "config.json").unlink()
    else:
        (root / MANIFEST).unlink()
    problem = {"changed": "changed: model.safetensors", "extra": "extra: notes.txt", "missing": "missing: config.json",
               "no manifest": f"no {MANIFEST} in {root}"}[tamper]
    with pytest.raises(hub.UnverifiedOutputError, match=f"not pushing {root}: it does not match its manifest "
                       rf"{MANIFEST} \({problem}\)\. Push only what a run finished and verified"):
        hub.push_directory(root, hub.HubSettings(True, "me/x", None, None, None))
    assert hub.main([str(root), "--hub_model_id", "me/x"]) == 1
    assert capsys.readouterr().err.startswith(f"ftlib-push: UnverifiedOutputError: not pushing {root}")
    assert fake_hub == []  # refused before the Hub was asked anything


def test_ftlib_push_preflight_errors_are_named_and_exit_1(tmp_path, fake_hub, capsys):
    root = _finished_dir(tmp_path / "out")
    FakeHfApi.errors["whoami"] = _connect_error()
    assert hub.main([str(root), "--hub_model_id", "me/x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ftlib-push: HubUnreachableError: cannot reach the Hub at https://huggingface.co to push me/x")
    assert "ftlib-push " + str(root) not in err  # no "push later" advice from the command that pushes later
    assert _pushes(fake_hub) == []


def test_ftlib_push_is_installed():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "ftlib-push"
    done = subprocess.run([script, "--help"], check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("usage: ftlib-push [-h] [--hub_model_id HUB_MODEL_ID]")
