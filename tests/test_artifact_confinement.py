"""An artifact can only read what is inside it, and its prompt weights are finite: checked on every route that
loads one (Python ``load``, ``prompttune predict``, ``ServeEngine.add``, the server's admin route)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import run_cli, toy_rows
from prompttune import load
from prompttune.backbone import Backbone
from prompttune.errors import ArtifactError
from prompttune.model import PromptModel

VERB = {"negative": "bad", "positive": "good"}


@pytest.fixture
def soft_artifact(saved_tiny, tmp_path):
    pm = PromptModel(Backbone.load(saved_tiny("llama")), "{soft*4} {text} Sentiment: {mask}", VERB, "soft-prompt")
    pm.save(tmp_path / "soft")
    return tmp_path / "soft"


@pytest.fixture
def finetuned_artifact(saved_tiny, tmp_path):
    pm = PromptModel(Backbone.load(saved_tiny("bert-mlm")), "{text} Sentiment: {mask}", VERB, "prompt-finetune")
    pm.save(tmp_path / "ft")
    shutil.copytree(tmp_path / "ft" / "backbone", tmp_path / "elsewhere")  # a model directory outside the artifact
    return tmp_path / "ft"


def _edit_meta(d, **changes):
    meta = json.loads((d / "prompt.json").read_text())
    meta.update(changes)
    (d / "prompt.json").write_text(json.dumps(meta))


def _routes(d, saved_tiny, monkeypatch, capsys, *, served: bool) -> list[str]:
    """The error each loading route gives for artifact ``d`` (each must refuse it)."""
    messages = []
    with pytest.raises(ArtifactError) as e:
        load(d)
    messages.append(str(e.value))
    code, out, err = run_cli(monkeypatch, capsys, "predict", d, "a good film", "--json")
    assert code != 0 and out == "" and "Traceback" not in err and err.startswith("error:"), err
    messages.append(err)
    if served:
        from prompttune.serve import ServeEngine

        eng = ServeEngine(Backbone.load(saved_tiny("llama")), start=False)
        with pytest.raises(ArtifactError) as e:
            eng.add(d, name="tampered")
        messages.append(str(e.value))
        pytest.importorskip("fastapi")
        from fastapi.testclient import TestClient

        from prompttune.serve.app import create_app

        with TestClient(create_app(eng, allow_admin=True)) as c:
            r = c.post("/v1/tasks", json={"path": str(d), "name": "tampered"})
        assert 400 <= r.status_code < 500, r.text
        messages.append(r.text)
        eng.close()
    return messages


@pytest.mark.parametrize("where", ["../elsewhere", "ABSOLUTE", "backbone/../../elsewhere"])
def test_a_trained_backbone_path_outside_the_artifact_is_refused(finetuned_artifact, saved_tiny, monkeypatch, capsys, where):
    d = finetuned_artifact
    _edit_meta(d, trained_backbone=str(d.parent / "elsewhere") if where == "ABSOLUTE" else where)
    for msg in _routes(d, saved_tiny, monkeypatch, capsys, served=False):
        assert "its 'backbone' subdirectory" in msg and "Fix:" in msg


def test_a_symlinked_backbone_or_weight_file_pointing_outside_is_refused(finetuned_artifact, saved_tiny, monkeypatch, capsys):
    d = finetuned_artifact
    (d / "backbone" / "model.safetensors").unlink()
    (d / "backbone" / "model.safetensors").symlink_to(d.parent / "elsewhere" / "model.safetensors")
    for msg in _routes(d, saved_tiny, monkeypatch, capsys, served=False):
        assert "backbone/model.safetensors points outside the artifact directory" in msg
    shutil.rmtree(d / "backbone")
    (d / "backbone").symlink_to(d.parent / "elsewhere", target_is_directory=True)
    for msg in _routes(d, saved_tiny, monkeypatch, capsys, served=False):
        assert "backbone points outside the artifact directory" in msg


def test_a_symlinked_prompt_file_pointing_outside_is_refused_on_every_route(soft_artifact, saved_tiny, monkeypatch, capsys):
    d = soft_artifact
    shutil.move(d / "prompt.safetensors", d.parent / "stolen.safetensors")
    (d / "prompt.safetensors").symlink_to(d.parent / "stolen.safetensors")
    for msg in _routes(d, saved_tiny, monkeypatch, capsys, served=True):
        assert "prompt.safetensors points outside the artifact directory" in msg


def test_a_symlink_inside_the_artifact_is_fine(soft_artifact):
    d = soft_artifact
    shutil.move(d / "prompt.safetensors", d / "weights.bin")
    (d / "prompt.safetensors").symlink_to("weights.bin")
    assert load(d).predict(["good film"])[0]["label"] in VERB


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_prompt_weights_are_refused_with_the_tensors_name(soft_artifact, saved_tiny, monkeypatch, capsys, bad):
    d = soft_artifact
    tensors = load_file(str(d / "prompt.safetensors"))
    name = next(iter(tensors))
    tensors[name][0, 1] = bad
    save_file(tensors, str(d / "prompt.safetensors"))
    for msg in _routes(d, saved_tiny, monkeypatch, capsys, served=True):
        assert f"tensor {name!r} holds 1 NaN or infinite value(s)" in msg


def test_integer_prompt_weights_are_refused(soft_artifact):
    d = soft_artifact
    tensors = {k: v.to(torch.int64) for k, v in load_file(str(d / "prompt.safetensors")).items()}
    save_file(tensors, str(d / "prompt.safetensors"))
    with pytest.raises(ArtifactError, match="has dtype int64; the soft-prompt method.*stores it as floating point"):
        load(d)


def test_the_rl_prompts_token_ids_still_load(saved_tiny, tmp_path):
    pm = PromptModel(Backbone.load(saved_tiny("llama")), "{soft} {text} Sentiment: {mask}", VERB, "rl-prompt")
    pm.save(tmp_path / "rl")
    assert any(not t.is_floating_point() for t in load_file(str(tmp_path / "rl" / "prompt.safetensors")).values())
    rows = toy_rows(4)
    torch.testing.assert_close(load(tmp_path / "rl").predict_log_probs(rows), pm.predict_log_probs(rows))
