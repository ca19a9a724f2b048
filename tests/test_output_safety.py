"""An output directory is never left broken or mixed: a kill -9 at any point of saving or of a run leaves the
old directory or the new one, whole; a failed run changes nothing; a directory holding a user's files is refused.

The kills are real: a forked child installs a counter on every file-system call prompttune makes (open, rename,
replace, mkdir, unlink, rmtree, the safetensors write, the directory exchange) and SIGKILLs itself at call N,
before or after it; the parent then checks what is on disk, for N = 1, 2, ... until a child finishes."""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_backbone, toy_rows, write_jsonl
from prompttune import load
from prompttune.errors import ConfigError, DataError, PromptTuneError, VerbalizerError
from prompttune.model import PromptModel

VERB = {"negative": "bad", "positive": "good"}
pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


class _KillAt:
    """SIGKILL this process at the n-th file-system call (each call counts twice: before and after it)."""

    def __init__(self, n: int):
        self.n, self.count = n, 0

    def tick(self):
        self.count += 1
        if self.count == self.n:
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap(self, fn):
        def wrapped(*a, **kw):
            self.tick()
            result = fn(*a, **kw)
            self.tick()
            return result
        return wrapped

    def install(self):
        import prompttune.artifact as A
        import prompttune.files as F

        for mod, names in ((os, ("open", "replace", "rename", "mkdir", "unlink", "rmdir")), (shutil, ("rmtree",)),
                           (builtins, ("open",)), (F, ("_exchange",)), (A, ("save_file",))):
            for name in names:
                setattr(mod, name, self.wrap(getattr(mod, name)))


def _killed_at_every_point(action, check, *, stride: int = 1, limit: int = 5000) -> int:
    """Run ``action`` in forked children killed at call 1, 1 + stride, ...; ``check()`` after each kill.
    Returns how many kills were checked; the last child must run to the end."""
    torch.set_num_threads(1)  # no OpenMP pool to inherit across fork
    kills = 0
    for n in range(1, limit, stride):
        pid = os.fork()
        if pid == 0:  # the child
            code = 0
            try:
                _KillAt(n).install()
                action()
            except BaseException:  # noqa: BLE001 - reported through the exit code
                import traceback

                traceback.print_exc()
                code = 3
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            assert os.WTERMSIG(status) == signal.SIGKILL
            kills += 1
            check(n)
            continue
        assert os.WEXITSTATUS(status) == 0, f"the child failed (not killed) at point {n}"
        check(n)
        print(f"{kills} kills checked, the action finished at point {n}")  # shown with pytest -s
        return kills
    raise AssertionError("the action never finished")


def _snapshot(d: Path) -> dict[str, str]:
    """Every file under ``d`` by content (prompt.json without its timestamp)."""
    out = {}
    for p in sorted(d.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "prompt.json":
                meta = json.loads(data)
                meta.pop("created")
                data = json.dumps(meta, sort_keys=True).encode()
            out[str(p.relative_to(d))] = hashlib.sha256(data).hexdigest()
    return out


# method -> (kind, old template, new template, options); old and new differ in what is saved
SAVE_CASES = {
    "soft-prompt": ("llama", "{soft*8} {text} Sentiment: {mask}", "{soft*16} {text} Sentiment: {mask}", {}),
    "p-tuning": ("llama", "{soft*4} {text} Sentiment: {mask}", "{soft*6} {text} It was {mask}", {"encoder": "mlp"}),
    "prefix": ("gpt2", "{text} Sentiment: {mask}", "{text} It was {mask}", {"init": "random", "num_tokens": 2}),
    "lora": ("llama", "{text} Sentiment: {mask}", "{text} It was {mask}", {"r": 2}),
    "zero-shot": ("llama", "Review: {text} Sentiment: {mask}", "{text} It was {mask}", {}),
    "rl-prompt": ("llama", "{soft} {text} Sentiment: {mask}", "{soft} {soft} {text} It was {mask}", {}),
    "prompt-finetune": ("bert-mlm", "{text} Sentiment: {mask}", "{text} It was {mask}", {}),
    "head-finetune": ("bert-head", "{text}", "Review: {text}", {}),
}


@pytest.mark.parametrize("case", SAVE_CASES)
def test_a_kill_at_any_point_of_save_leaves_the_old_artifact_or_the_new_one_whole(tmp_path, case):
    kind, old_tpl, new_tpl, options = SAVE_CASES[case]
    method = "soft-prompt" if case == "p-tuning" else case

    def model(tpl, seed):
        pm = PromptModel(tiny_backbone(kind), tpl, VERB, method, method_options=options, seed=seed)
        with torch.no_grad():  # distinct weights, as two trainings would leave
            for p in pm.method.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 0.1)
        return pm

    out, ref = tmp_path / "run", tmp_path / "ref"
    old_pm = model(old_tpl, 1)
    old_pm.save(out)
    new_pm = model(new_tpl, 2)
    if new_pm.method.trains_backbone:
        with torch.no_grad():
            next(new_pm.backbone.model.parameters()).add_(0.5)  # the fine-tuned backbone changed too
    new_pm.save(ref)
    old, new = _snapshot(out), _snapshot(ref)
    assert old != new
    rows = toy_rows(4, seed=9)
    want = {"old": None, "new": new_pm.predict_log_probs(rows)}

    seen = set()

    def loaded():
        return load(out) if new_pm.method.trains_backbone else load(out, backbone=tiny_backbone(kind))

    def check(n):
        now = _snapshot(out)
        assert now in (old, new), f"after a kill at point {n} the directory is neither the old artifact nor the new one"
        which = "old" if now == old else "new"
        seen.add(which)
        if which == "new" or n % 7 == 0:  # loadable (the new one scores as the model that was saved)
            got = loaded().predict_log_probs(rows)
            if which == "new":
                torch.testing.assert_close(got, want["new"])

    kills = _killed_at_every_point(lambda: new_pm.save(out), check)
    assert kills >= 5 and seen == {"old", "new"}
    new_pm.save(out)  # the next save clears what the killed ones left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref", "run"]


def _run_config(tmp_path, saved_tiny, method: str, tokens: int, **extra) -> dict:
    write_jsonl(tmp_path / "train.jsonl", toy_rows(24, seed=1))
    write_jsonl(tmp_path / "test.jsonl", toy_rows(8, seed=2))
    tpl = "{soft*%d} {text} Sentiment: {mask}" % tokens if method == "soft-prompt" else "Review: {text} Sentiment:%s {mask}" % (" x" * tokens)
    cfg = {"model": {"name": saved_tiny("bert-mlm" if method == "prompt-finetune" else "llama")},
           "prompt": {"template": tpl, "verbalizer": VERB}, "method": {"name": method},
           "data": {"train": str(tmp_path / "train.jsonl"), "test": str(tmp_path / "test.jsonl"), "shots_per_class": 4},
           "train": {"max_steps": 2, "eval_every": 1, "progress": False, "lr": 0.01}, "output": str(tmp_path / "out")}
    for k, v in extra.items():
        cfg[k] = v
    return cfg


def _run(cfg: dict):
    from prompttune.config import RunConfig
    from prompttune.pipeline import run_training

    return run_training(RunConfig.model_validate(cfg), progress=False, log=lambda m: None)


def _one_run(out: Path) -> str:
    """Which run the directory holds, checked to be one run: artifact, metrics, report and config agree."""
    meta = json.loads((out / "prompt.json").read_text())
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert meta["template"] == cfg["prompt"]["template"]
    assert metrics["accuracy"] == meta["metrics"]["accuracy"]
    assert (out / "report.md").is_file()
    assert sorted(p.name for p in out.iterdir() if p.name != "backbone") == sorted(
        ["README.md", "prompt.json", "prompt.safetensors", "metrics.json", "report.md", "confusion_matrix.png", "config.yaml",
         "predictions.jsonl"]
        + (["training_curve.png"] if (out / "training_curve.png").exists() else []))
    return meta["template"]


@pytest.mark.parametrize("method", ["soft-prompt", "prompt-finetune"])
def test_a_kill_at_any_point_of_a_training_run_leaves_the_old_run_or_the_new_one(tmp_path, saved_tiny, method):
    old_cfg, new_cfg = _run_config(tmp_path, saved_tiny, method, 2), _run_config(tmp_path, saved_tiny, method, 3)
    _run(old_cfg)
    old_tpl, new_tpl = old_cfg["prompt"]["template"], new_cfg["prompt"]["template"]
    seen = []

    def check(n):
        seen.append(_one_run(tmp_path / "out"))

    # a run makes a few hundred file-system calls (its imports included): every third is a kill point
    kills = _killed_at_every_point(lambda: _run(new_cfg), check, stride=3)
    assert kills >= 10 and set(seen) == {old_tpl, new_tpl} and seen[-1] == new_tpl
    assert seen == sorted(seen, key=[old_tpl, new_tpl].index)  # old until the swap, new from it on


def test_a_run_that_fails_after_training_changes_nothing(tmp_path, saved_tiny, monkeypatch):
    cfg = _run_config(tmp_path, saved_tiny, "soft-prompt", 2)
    _run(cfg)
    before = _snapshot(tmp_path / "out")

    def broken(*a, **kw):
        raise PromptTuneError("the disk is full", where="evaluation")

    monkeypatch.setattr(PromptModel, "evaluate", broken)
    with pytest.raises(PromptTuneError, match="disk is full"):
        _run(_run_config(tmp_path, saved_tiny, "soft-prompt", 3))
    assert _snapshot(tmp_path / "out") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "test.jsonl", "train.jsonl"]  # no staging left


def test_a_bad_test_file_is_found_before_training(tmp_path, saved_tiny, monkeypatch):
    cfg = _run_config(tmp_path, saved_tiny, "soft-prompt", 2)
    _run(cfg)
    before = _snapshot(tmp_path / "out")
    write_jsonl(tmp_path / "test.jsonl", toy_rows(6, seed=3) + [{"text": "fine film", "label": "neutral"}])
    trained = []
    monkeypatch.setattr(PromptModel, "fit", lambda *a, **kw: trained.append(1))
    with pytest.raises(VerbalizerError, match=r"\['neutral'\] occur in the test data.*Fix: add them"):
        _run(cfg)
    write_jsonl(tmp_path / "test.jsonl", [{"review": "no text column", "label": "positive"}])
    with pytest.raises(DataError, match="row 1 of the test data has no column 'text'"):
        _run(cfg)
    assert not trained and _snapshot(tmp_path / "out") == before


def test_an_output_directory_with_the_users_files_is_refused_unless_overwrite(tmp_path, saved_tiny, monkeypatch):
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "config.yaml").write_text("my: own\n")
    (mine / "notes.txt").write_text("keep me\n")
    cfg = _run_config(tmp_path, saved_tiny, "soft-prompt", 2)
    with pytest.raises(ConfigError, match=r"holds files prompttune did not write \(notes.txt\).*--overwrite"):
        _run({**cfg, "output": str(mine)})
    assert (mine / "notes.txt").read_text() == "keep me\n" and (mine / "config.yaml").read_text() == "my: own\n"
    monkeypatch.chdir(mine)
    for output in (".", "", str(mine), str(tmp_path)):
        with pytest.raises(ConfigError, match="current directory|above the current one"):
            _run({**cfg, "output": output, "overwrite": True})
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml", "notes.txt"]
    res = _run({**cfg, "output": str(tmp_path / "project2"), "overwrite": True})
    assert res["accuracy"] >= 0
    (tmp_path / "project2" / "extra.txt").write_text("x")
    _run({**cfg, "output": str(tmp_path / "project2"), "overwrite": True})  # asked for: replaced whole
    assert not (tmp_path / "project2" / "extra.txt").exists()


def test_the_cli_refuses_the_current_directory_as_output(tmp_path, saved_tiny, monkeypatch, capsys):
    from conftest import run_cli

    cfg = _run_config(tmp_path, saved_tiny, "soft-prompt", 2)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "train", "run.yaml", "--output", ".")
    assert code != 0 and "is the current directory" in err and "Fix:" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.yaml", "test.jsonl", "train.jsonl"]
