"""Artifacts: safetensors + JSON, kilobytes for a soft prompt, refused on the wrong backbone."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import toy_rows
from prompttune import load
from prompttune.artifact import artifact_bytes
from prompttune.backbone import Backbone
from prompttune.errors import ArtifactError
from prompttune.model import PromptModel

VERB = {"negative": "bad", "positive": "good"}


def _trained(path, method="soft-prompt", template="{soft*4} {text} Sentiment: {mask}", **kw):
    pm = PromptModel(Backbone.load(path), template, VERB, method, **kw)
    pm.fit(toy_rows(16), None, lr=0.05, max_steps=3, progress=False)
    return pm


def test_soft_prompt_artifact_round_trips_with_identical_scores(saved_tiny, tmp_path):
    pm = _trained(saved_tiny("llama"), method_options={"encoder": "mlp"})
    pm.verbalizer.calibration = [0.1, -0.1]
    pm.save(tmp_path / "a")
    again = load(tmp_path / "a")
    rows = toy_rows(6, seed=3)
    torch.testing.assert_close(again.predict_log_probs(rows), pm.predict_log_probs(rows))
    assert again.verbalizer.calibration == [0.1, -0.1]
    assert again.method.options.encoder == "mlp"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["README.md", "prompt.json", "prompt.safetensors"]
    assert artifact_bytes(tmp_path / "a") < 20_000


def test_artifact_records_what_a_user_needs(saved_tiny, tmp_path):
    pm = _trained(saved_tiny("llama"))
    pm.save(tmp_path / "a")
    meta = json.loads((tmp_path / "a" / "prompt.json").read_text())
    assert meta["template"] == "{soft*4} {text} Sentiment: {mask}"
    assert meta["verbalizer"]["words"] == {"negative": ["bad"], "positive": ["good"]}
    assert meta["method"]["name"] == "soft-prompt"
    assert meta["backbone"]["family"] == "causal-lm" and len(meta["backbone"]["fingerprint"]) == 16
    assert {"prompttune", "torch", "transformers"} <= set(meta["versions"])
    assert meta["trainable_parameters"] == 4 * 32


def test_loading_onto_another_backbone_is_refused(saved_tiny, tmp_path):
    pm = _trained(saved_tiny("llama"))
    pm.save(tmp_path / "a")
    other = Backbone.load(saved_tiny("llama"))
    with torch.no_grad():
        other.model.get_input_embeddings().weight.mul_(1.5)
    with pytest.raises(ArtifactError, match="trained on"):
        load(tmp_path / "a", backbone=other)


def test_prompt_finetune_saves_its_backbone_with_save_pretrained(saved_tiny, tmp_path):
    pm = _trained(saved_tiny("bert-mlm"), method="prompt-finetune", template="{text} Sentiment: {mask}")
    pm.save(tmp_path / "a")
    files = {p.name for p in (tmp_path / "a" / "backbone").iterdir()}
    assert "model.safetensors" in files and "config.json" in files
    again = load(tmp_path / "a")
    rows = toy_rows(5, seed=4)
    torch.testing.assert_close(again.predict_log_probs(rows), pm.predict_log_probs(rows), atol=1e-5, rtol=1e-5)


def test_no_pickle_anywhere_in_an_artifact(saved_tiny, tmp_path):
    pm = _trained(saved_tiny("bert-mlm"), method="prompt-finetune", template="{text} Sentiment: {mask}")
    pm.save(tmp_path / "a")
    suffixes = {p.suffix for p in (tmp_path / "a").rglob("*") if p.is_file()}
    assert not suffixes & {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


@pytest.mark.parametrize("damage,match", [
    (lambda d: (d / "prompt.json").unlink(), "not a prompttune artifact"),
    (lambda d: (d / "prompt.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "prompt.json").write_text('{"format": "other"}'), "not a prompttune artifact"),
    (lambda d: (d / "prompt.safetensors").write_bytes(b"garbage"), "cannot read prompt.safetensors"),
    (lambda d: (d / "prompt.safetensors").unlink(), "prompt.safetensors is missing"),
])
def test_damaged_artifacts_give_clear_errors(saved_tiny, tmp_path, damage, match):
    pm = _trained(saved_tiny("llama"))
    pm.save(tmp_path / "a")
    damage(tmp_path / "a")
    with pytest.raises(ArtifactError, match=match):
        load(tmp_path / "a")


def test_saving_leaves_no_temporary_files(saved_tiny, tmp_path):
    pm = _trained(saved_tiny("llama"))
    pm.save(tmp_path / "a")
    pm.save(tmp_path / "a")  # overwrite in place
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]
