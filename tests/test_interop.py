"""PEFT interoperability: exported adapters give PEFT the same outputs; PEFT adapters import with the same outputs."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_backbone, toy_rows
from prompttune.errors import ArtifactError
from prompttune.interop import export_peft, import_peft
from prompttune.model import PromptModel

V = {"negative": "negative", "positive": "positive"}
TPL = "Review: {text} Sentiment: {mask}"


def _peft_class_log_probs(peft_model, pm, rows):
    """Score each row with a PEFT model: the rendered prompt (no soft tokens) up to the mask, label words' logits."""
    out = []
    words = [w[0] for w in pm.word_ids]
    for row in rows:
        r = pm.render(row)
        ids = torch.tensor([[i for i, s in zip(r.ids[: r.mask], r.soft[: r.mask]) if s < 0]])
        with torch.no_grad():
            logits = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1]
        out.append(logits[words].log_softmax(-1))
    return torch.stack(out)


def _trained(kind, method, **opts):
    bb = tiny_backbone(kind)
    pm = PromptModel(bb, TPL, V, method, method_options=opts)
    pm.fit(toy_rows(16, seed=2), None, max_steps=4, lr=5e-2, progress=False)
    return pm


@pytest.mark.parametrize("kind,method,opts", [("llama", "soft-prompt", {"num_tokens": 4}), ("gpt2", "soft-prompt", {"num_tokens": 3}),
                                              ("llama", "prefix", {"num_tokens": 3, "init": "random"}),
                                              ("gpt2", "prefix", {"num_tokens": 2, "init_text": "the film"})])
def test_exported_adapter_gives_peft_the_same_outputs_and_imports_back(tmp_path, kind, method, opts):
    from peft import PeftModel

    pm = _trained(kind, method, **opts)
    rows = toy_rows(5, seed=9)
    ours = pm.predict_log_probs(rows)
    out = export_peft(pm, tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors", "prompttune.json"} <= {p.name for p in out.iterdir()}
    fresh = tiny_backbone(kind)
    peft_model = PeftModel.from_pretrained(fresh.model, str(out)).eval()
    assert torch.allclose(_peft_class_log_probs(peft_model, pm, rows), ours, atol=1e-4)
    back = import_peft(out, tiny_backbone(kind))
    assert back.method.name == method
    assert torch.allclose(back.predict_log_probs(rows), ours, atol=1e-5)


def test_a_p_tuning_adapter_made_by_peft_imports_with_its_encoder_folded_in(tmp_path):
    from peft import PromptEncoderConfig, get_peft_model

    bb = tiny_backbone("llama")
    torch.manual_seed(1)
    peft_model = get_peft_model(bb.model, PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_hidden_size=16))
    peft_model.save_pretrained(tmp_path / "ptuning")
    peft_model.eval()
    pm = import_peft(tmp_path / "ptuning", tiny_backbone("llama"), template=TPL, verbalizer=V)
    rows = toy_rows(4, seed=5)
    assert torch.allclose(pm.predict_log_probs(rows), _peft_class_log_probs(peft_model, pm, rows), atol=1e-4)


def test_soft_tokens_in_the_middle_of_a_template_cannot_be_exported(tmp_path):
    pm = PromptModel(tiny_backbone("llama"), "Review: {text} {soft*2} Sentiment: {mask}", V, "soft-prompt")
    with pytest.raises(ArtifactError, match="PEFT"):
        export_peft(pm, tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("kind", ["bert-mlm", "t5"])
def test_prompts_on_families_where_peft_differs_are_refused(tmp_path, kind):
    pm = PromptModel(tiny_backbone(kind), TPL, V, "prefix", method_options={"init": "random", "num_tokens": 2})
    with pytest.raises(ArtifactError, match="no PEFT equivalent"):
        export_peft(pm, tmp_path / "x")


def test_importing_something_that_is_not_an_adapter_says_so(tmp_path):
    with pytest.raises(ArtifactError, match="adapter_config.json"):
        import_peft(tmp_path, tiny_backbone("llama"), template=TPL, verbalizer=V)


def test_cli_exports_and_imports_peft_adapters(tmp_path, saved_tiny, monkeypatch, capsys):
    from test_cli import run

    from prompttune.artifact import load
    from prompttune.backbone import Backbone

    bb = Backbone.load(saved_tiny("llama"))
    pm = PromptModel(bb, TPL, V, "prefix", method_options={"init": "random", "num_tokens": 2})
    pm.save(tmp_path / "art")
    code, out, err = run(monkeypatch, capsys, "export-peft", tmp_path / "art", tmp_path / "adapter")
    assert code == 0, err
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    code, out, err = run(monkeypatch, capsys, "import-peft", tmp_path / "adapter", tmp_path / "back", "--model", saved_tiny("llama"))
    assert code == 0, err
    rows = toy_rows(4)
    assert torch.allclose(load(tmp_path / "back").predict_log_probs(rows), pm.predict_log_probs(rows), atol=1e-5)
    code, out, err = run(monkeypatch, capsys, "import-peft", tmp_path / "art", tmp_path / "x", "--model", saved_tiny("llama"))
    assert code == 2 and "adapter_config.json" in err
