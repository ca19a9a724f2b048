"""LoRA through peft as a baseline: same template, verbalizer, trainer and artifact as the prompt methods."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import prompttune
from conftest import tiny_backbone, toy_rows
from prompttune.errors import ConfigError
from prompttune.model import PromptModel

V = {"negative": "negative", "positive": "positive"}
TPL = "Review: {text} Sentiment: {mask}"


@pytest.mark.parametrize("kind", ["llama", "gpt2", "bert-mlm", "bert-head", "t5"])
def test_lora_starts_at_zero_shot_trains_only_its_matrices_and_reloads(tmp_path, kind):
    bb = tiny_backbone(kind)
    rows, train = toy_rows(8), toy_rows(32, seed=1)
    if kind != "bert-head":
        zero = PromptModel(bb, TPL, V, "zero-shot").predict_log_probs(rows)
    base = {n: p.detach().clone() for n, p in bb.model.named_parameters()}
    pm = PromptModel(bb, TPL, V, "lora", method_options={"r": 4})
    if kind != "bert-head":
        assert torch.allclose(pm.predict_log_probs(rows), zero, atol=1e-6)  # B starts at zero
    y = pm.labels_tensor(train)
    loss0 = float(torch.nn.functional.nll_loss(pm.predict_log_probs(train), y))
    pm.fit(train, None, max_steps=30, lr=1e-2, progress=False)
    assert float(torch.nn.functional.nll_loss(pm.predict_log_probs(train), y)) < loss0 - 0.1
    head = set(bb.head_parameters()) if kind == "bert-head" else set()
    for n, p in bb.model.named_parameters():
        if ".lora_" not in n and n in base and n not in head:
            assert torch.equal(p, base[n]), n
    pm.save(tmp_path / "a")
    saved = load_file(str(tmp_path / "a" / "prompt.safetensors"))
    assert saved and all(k.startswith(("lora/", "head/")) for k in saved)
    assert not (tmp_path / "a" / "backbone").exists()
    loaded = prompttune.load(tmp_path / "a", backbone=tiny_backbone(kind))
    assert torch.allclose(loaded.predict_log_probs(rows), pm.predict_log_probs(rows), atol=1e-5)


def test_a_second_lora_on_the_same_backbone_is_refused():
    bb = tiny_backbone("llama")
    PromptModel(bb, TPL, V, "lora")
    with pytest.raises(ConfigError, match="already carries a LoRA"):
        PromptModel(bb, TPL, V, "lora")


def test_lora_target_modules_can_be_named_and_bad_names_are_clear():
    bb = tiny_backbone("llama")
    pm = PromptModel(bb, TPL, V, "lora", method_options={"r": 2, "target_modules": ["o_proj"]})
    assert all("o_proj" in n for n in pm.method._lora)
    with pytest.raises(ConfigError, match="target_modules"):
        PromptModel(tiny_backbone("llama"), TPL, V, "lora", method_options={"target_modules": ["nonexistent"]})


def test_lora_target_modules_as_a_regular_expression_match_whole_names_and_a_bad_pattern_is_clear():
    pm = PromptModel(tiny_backbone("llama"), TPL, V, "lora", method_options={"r": 2, "target_modules": r".*layers\.0\..*q_proj"})
    assert pm.method._lora and all(".layers.0." in n and "q_proj" in n for n in pm.method._lora)
    with pytest.raises(ConfigError, match="target_modules") as e:
        PromptModel(tiny_backbone("llama"), TPL, V, "lora", method_options={"target_modules": "(q_proj"})
    assert "regular expression" in str(e.value)
    with pytest.raises(ConfigError, match="target_modules"):  # matches no module
        PromptModel(tiny_backbone("llama"), TPL, V, "lora", method_options={"target_modules": "nothing.*here"})
