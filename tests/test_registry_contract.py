"""Contracts over the registries, not hand-kept lists: every registered method, task and family does what it claims.

A method registered in ``prompttune.methods`` (with its options in ``prompttune.schemas``) is trained, saved, loaded
and, where it says it is ``servable``, served, and must give the same answers at every step; one that is not servable
is refused by the server with the reason. Adding a method adds it here without editing this file.
"""

from __future__ import annotations

import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from conftest import tiny_backbone, toy_rows
from prompttune import GenerationModel, PromptModel
from prompttune.backbone import FAMILY_CLASSES, Backbone
from prompttune.errors import BackboneError, ConfigError
from prompttune.methods import METHODS
from prompttune.schemas import DEFAULT_METHOD, FAMILIES, METHOD_OPTIONS, MethodSpec
from prompttune.serve import TASK_KINDS, ServeEngine, TaskConflictError
from prompttune.tasks import TASKS

TEMPLATE = "{text} Sentiment: {mask}"
VERB = {"negative": "bad", "positive": "good"}
OPTIONS = {"lora": {"r": 2, "target_modules": ["q_proj", "v_proj"]}, "rl-prompt": {"num_tokens": 2, "candidates": 40, "samples": 2}}
TRAIN = dict(max_steps=3, eval_every=3, batch_size=4, progress=False)


def _kind(method: str) -> str:
    return "bert-head" if METHODS[method].needs_task_head else "llama"


def test_every_method_has_its_options_schema_and_the_default_is_registered():
    assert set(METHODS) == set(METHOD_OPTIONS)
    for name, cls in METHODS.items():
        assert cls.name == name and cls.Options is METHOD_OPTIONS[name], name
    assert DEFAULT_METHOD in METHODS
    union = TypeAdapter(MethodSpec)  # the typed union of every method's options, tagged by name
    for name, options in METHOD_OPTIONS.items():
        spec = union.validate_python({"name": name})
        assert isinstance(spec, options) and spec.name == name
    with pytest.raises(ValidationError):
        union.validate_python({"name": "prefix", "no_such_option": 1})


def test_every_family_name_has_its_class():
    assert tuple(FAMILY_CLASSES) == FAMILIES
    assert all(cls.name == name for name, cls in FAMILY_CLASSES.items())


def test_every_task_type_can_be_served():
    assert set(TASKS) == set(TASK_KINDS)
    for name, cls in TASKS.items():
        assert cls.name == name and TASK_KINDS[name].kind == name


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_saves_loads_and_serves_where_it_claims(method, saved_tiny, tmp_path):
    cls = METHODS[method]
    directory = saved_tiny(_kind(method))
    pm = PromptModel(Backbone.load(directory, task_head=cls.needs_task_head, num_labels=2), TEMPLATE, VERB, method,
                     method_options=OPTIONS.get(method), seed=0)
    rows = toy_rows(16, seed=1)
    before = pm.predict_log_probs(rows).clone()
    if cls.trainable:
        result = pm.fit(rows[:8], rows[8:12], lr=0.05, **TRAIN)
        assert result.steps >= 1
        assert pm.num_trainable_parameters() > 0
    else:
        assert pm.num_trainable_parameters() == 0
    tuned = pm.predict_log_probs(rows)
    assert torch.isfinite(tuned).all()
    pm.save_pretrained(tmp_path / "art")
    assert ((tmp_path / "art" / "backbone").is_dir()) == cls.trains_backbone
    loaded = PromptModel.from_pretrained(tmp_path / "art")
    assert type(loaded.method) is cls
    torch.testing.assert_close(loaded.predict_log_probs(rows), tuned, atol=1e-5, rtol=0)
    if not cls.trainable:
        torch.testing.assert_close(tuned, before, atol=1e-6, rtol=0)

    engine = ServeEngine(Backbone.load(directory, task_head=cls.needs_task_head, num_labels=2), start=False)
    try:
        if not cls.servable:
            with pytest.raises(TaskConflictError):
                engine.add(tmp_path / "art", name="t")
            return
        engine.add(tmp_path / "art", name="t")
        served = torch.stack(engine.log_probs_mixed([("t", {"text": r["text"]}) for r in rows]))
        torch.testing.assert_close(served, tuned, atol=1e-4, rtol=0)
    finally:
        engine.close()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_that_generates_trains_saves_and_loads_a_generation_task(method, tmp_path):
    cls = METHODS[method]
    bb = tiny_backbone("gpt2")
    if not cls.generates:
        with pytest.raises(ConfigError, match="does not generate"):
            GenerationModel(bb, "copy: {src} =>", target="tgt", method=method, method_options=OPTIONS.get(method))
        return
    gm = GenerationModel(bb, "copy: {src} =>", target="tgt", method=method,
                         method_options={**OPTIONS.get(method, {}), **({"target_modules": ["c_attn"]} if method == "lora" else {})})
    rows = [{"src": r["text"], "tgt": r["label"]} for r in toy_rows(12, seed=2)]
    if cls.trainable:
        gm.fit(rows[:8], rows[8:], lr=0.05, **TRAIN)
    out = gm.generate([{"src": r["src"]} for r in rows[:3]], max_new_tokens=3)
    gm.save_pretrained(tmp_path / "gen")
    loaded = GenerationModel.from_pretrained(tmp_path / "gen", backbone=None if cls.trains_backbone else tiny_backbone("gpt2"))
    assert loaded.generate([{"src": r["src"]} for r in rows[:3]], max_new_tokens=3) == out
    assert loaded.loss_on(rows) == pytest.approx(gm.loss_on(rows), abs=1e-5)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "bert-mlm", "bert-head", "t5"])
def test_every_family_either_generates_or_says_it_does_not(kind):
    bb = tiny_backbone(kind)
    fam = bb.family
    assert type(fam) in FAMILY_CLASSES.values()
    rendered = PromptModel(bb, "{text} is{mask}", VERB, "zero-shot").render({"text": "good film"})
    if fam.generates:
        batch = fam.target_batch([rendered], [[5, 6, 2]])
        assert batch.n_targets == 3
        loss, n = fam.token_loss(fam.input_kwargs(bb.embed(batch.input_ids), batch.attention_mask), batch)
        assert n == 3 and torch.isfinite(loss)
    else:
        with pytest.raises(BackboneError, match="does not generate"):
            fam.target_batch([rendered], [[5, 6, 2]])


def test_bad_method_options_fail_before_any_model_loads():
    # the model path does not exist: reaching it would raise a BackboneError instead
    with pytest.raises(ConfigError, match="bad options for method 'prefix'"):
        PromptModel("/nonexistent/model", TEMPLATE, VERB, "prefix", method_options={"bogus": 1})
    with pytest.raises(ConfigError, match="bad options for method 'prefix'"):
        GenerationModel("/nonexistent/model", "copy: {src} =>", target="tgt", method="prefix", method_options={"bogus": 1})


def test_the_config_layer_and_the_command_line_help_load_no_torch():
    import subprocess
    import sys

    code = ("import sys, prompttune.config as c\n"
            "try:\n    c.load_config(None, ['method.name=prefix', 'method.bogus=1'])\nexcept c.ConfigError as e:\n    print(e)\n"
            "import prompttune.cli\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert "bad options for method 'prefix'" in out[0] and "bogus" in out[0]
    assert out[-1] == "False"
