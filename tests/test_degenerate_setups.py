"""Set-ups that would train to a meaningless result are refused before training (what, where, fix), or, where the
run can still mean something, warned about in the log and in metrics.json."""

from __future__ import annotations

import json

import pytest

from conftest import toy_rows, write_jsonl
from prompttune.config import RunConfig
from prompttune.errors import DataError, VerbalizerError
from prompttune.model import PromptModel
from prompttune.pipeline import run_training

VERB = {"negative": "bad", "positive": "good"}


def _cfg(tmp_path, saved_tiny, train_rows, *, verbalizer=VERB, test_rows=None, **data) -> RunConfig:
    write_jsonl(tmp_path / "train.jsonl", train_rows)
    write_jsonl(tmp_path / "test.jsonl", test_rows if test_rows is not None else toy_rows(8, seed=2))
    return RunConfig.model_validate({
        "model": {"name": saved_tiny("llama")},
        "prompt": {"template": "{text} Sentiment: {mask}", "verbalizer": verbalizer}, "method": {"name": "soft-prompt"},
        "data": {"train": str(tmp_path / "train.jsonl"), "test": str(tmp_path / "test.jsonl"),
                 "shots_per_class": None, **data},
        "train": {"max_steps": 2, "eval_every": 1, "progress": False}, "output": str(tmp_path / "out")})


def _no_training(monkeypatch) -> list:
    calls = []
    monkeypatch.setattr(PromptModel, "fit", lambda *a, **kw: calls.append(1))
    return calls


def test_two_labels_sharing_a_label_word_are_refused(tmp_path, saved_tiny, monkeypatch):
    trained = _no_training(monkeypatch)
    with pytest.raises(VerbalizerError, match="labels 'negative' and 'positive' share the label word 'fine'.*Fix: give each"):
        run_training(_cfg(tmp_path, saved_tiny, toy_rows(16), verbalizer={"negative": ["bad", "fine"], "positive": ["fine"]}))
    with pytest.raises(VerbalizerError, match="share the label word"):
        PromptModel(saved_tiny("llama"), "{text} {mask}", {"a": " good", "b": "good"})
    assert not trained and not (tmp_path / "out").exists()


def test_a_one_label_verbalizer_is_refused(tmp_path, saved_tiny, monkeypatch):
    trained = _no_training(monkeypatch)
    rows = [r for r in toy_rows(16) if r["label"] == "positive"]
    with pytest.raises(VerbalizerError, match="one label \\('positive'\\).*accuracy means nothing"):
        run_training(_cfg(tmp_path, saved_tiny, rows, verbalizer={"positive": "good"}, test_rows=rows))
    assert not trained


def test_a_training_set_of_one_class_is_refused(tmp_path, saved_tiny, monkeypatch):
    trained = _no_training(monkeypatch)
    rows = [r for r in toy_rows(32) if r["label"] == "positive"]
    with pytest.raises(DataError, match="every training example has the label 'positive'.*at least two labels"):
        run_training(_cfg(tmp_path, saved_tiny, rows, dev=str(tmp_path / "train.jsonl")))
    assert not trained


def test_a_label_without_training_examples_is_warned_about_in_the_log_and_metrics(tmp_path, saved_tiny):
    rows = toy_rows(16)
    log = []
    res = run_training(_cfg(tmp_path, saved_tiny, rows, verbalizer={**VERB, "neutral": "fine"}), log=log.append)
    assert any(m.startswith("warning: the labels ['neutral'] have no training example") for m in log)
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["warnings"] == res["warnings"] and "['neutral'] have no training example" in saved["warnings"][0]


def test_dev_rows_that_copy_training_rows_are_warned_about(tmp_path, saved_tiny):
    rows = toy_rows(16)
    log = []
    res = run_training(_cfg(tmp_path, saved_tiny, rows + rows[:4], shots_per_class=8, dev_shots_per_class=2), log=log.append)
    warned = [w for w in res["warnings"] if "dev examples are copies of training examples" in w]
    assert warned and any(m == f"warning: {warned[0]}" for m in log)


def test_a_clean_run_has_no_warnings(tmp_path, saved_tiny):
    res = run_training(_cfg(tmp_path, saved_tiny, toy_rows(32), test_rows=toy_rows(8, seed=5)), log=lambda m: None)
    assert "warnings" not in res
