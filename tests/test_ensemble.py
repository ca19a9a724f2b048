"""Ensembles: identical members equal one artifact, probabilities are averaged, one backbone is shared."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import cli_ok, toy_rows, write_jsonl
from prompttune.artifact import load
from prompttune.backbone import Backbone
from prompttune.ensemble import Ensemble
from prompttune.errors import ArtifactError
from prompttune.model import PromptModel


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, saved_tiny):
    d = tmp_path_factory.mktemp("ens")
    bb = Backbone.load(saved_tiny("llama"))
    a = PromptModel(bb, "{soft*2} Review: {text} Sentiment: {mask}", {"negative": "bad", "positive": "good"}, "soft-prompt")
    a.fit(toy_rows(16, seed=1), None, lr=0.05, max_steps=3, progress=False)
    a.save(d / "a")
    PromptModel(bb, "{text} It was {mask}", {"negative": "awful", "positive": "great"}, "zero-shot").save(d / "b")
    PromptModel(bb, "{text} It was {mask}", {"bad": "awful", "good": "great"}, "zero-shot").save(d / "other-labels")
    return d


def test_an_ensemble_of_identical_artifacts_equals_the_single_artifact(artifacts):
    rows = toy_rows(10, seed=2)
    single = load(artifacts / "a").predict_log_probs(rows)
    ens = Ensemble.load([artifacts / "a", artifacts / "a", artifacts / "a"])
    torch.testing.assert_close(ens.predict_log_probs(rows), single, atol=1e-5, rtol=0)
    assert ens.predict(["a great film"]) == load(artifacts / "a").predict(["a great film"])


def test_probabilities_are_averaged_and_the_backbone_is_shared(artifacts):
    rows = toy_rows(10, seed=3)
    ens = Ensemble.load([artifacts / "a", artifacts / "b"])
    assert ens.models[0].backbone is ens.models[1].backbone
    pa, pb = (load(artifacts / n).predict_log_probs(rows).exp() for n in ("a", "b"))
    torch.testing.assert_close(ens.predict_log_probs(rows).exp(), (pa + pb) / 2, atol=1e-5, rtol=0)
    weighted = Ensemble(ens.models, weights=[3, 1])
    torch.testing.assert_close(weighted.predict_log_probs(rows).exp(), 0.75 * pa + 0.25 * pb, atol=1e-5, rtol=0)
    m = ens.evaluate(rows)
    assert m["members"] == 2 and m["n"] == 10


def test_members_must_predict_the_same_labels(artifacts):
    with pytest.raises(ArtifactError, match="same labels"):
        Ensemble.load([artifacts / "a", artifacts / "other-labels"])


def test_predict_and_eval_commands_take_several_artifacts(artifacts, monkeypatch, capsys, tmp_path):
    def run(*args):
        return cli_ok(monkeypatch, capsys, *args)

    out = [json.loads(l) for l in run("predict", artifacts / "a", artifacts / "b", "a great film", "bad plot", "--json").splitlines()]
    expected = Ensemble.load([artifacts / "a", artifacts / "b"]).predict(["a great film", "bad plot"])
    assert [o["input"] for o in out] == ["a great film", "bad plot"]
    assert [o["probabilities"] for o in out] == [e["probabilities"] for e in expected]
    write_jsonl(tmp_path / "test.jsonl", toy_rows(8, seed=4))
    m = json.loads(run("eval", artifacts / "a", "--with", artifacts / "b", "--data", tmp_path / "test.jsonl", "--json"))
    assert m["members"] == 2 and m["n"] == 8
