"""Serving generation tasks and encoder + head tasks on one frozen backbone, beside classification tasks."""

from __future__ import annotations

import pytest
import torch

from conftest import toy_rows
from prompttune import PromptModel, load
from prompttune.backbone import Backbone
from prompttune.generation import GenerationModel
from prompttune.serve import ServeEngine, TaskConflictError

WORDS = "good bad film plot actor story".split()
SOURCES = ["good film", "the plot was very bad and the actor was awful", "story", "it is a nice movie", "bad bad film"]

# name -> (template, method, options): two soft prompts (one of them P-tuning), a hand prompt, a deep prompt.
GEN_SPECS = {
    "copy": ("{soft*4} copy: {src} =>", "soft-prompt", {}),
    "echo": ("{soft*2} echo {src} :", "soft-prompt", {"encoder": "mlp"}),
    "hand": ("Repeat: {src} =", "zero-shot", {}),
    "deep": ("say {src} ->", "prefix", {"init": "random", "num_tokens": 3}),
}


def _write_generation_artifacts(model_dir, out, specs=GEN_SPECS):
    for seed, (name, (tpl, method, opts)) in enumerate(specs.items()):
        gm = GenerationModel(Backbone.load(model_dir), tpl, target="tgt", method=method, method_options=opts, seed=seed + 1)
        with torch.no_grad():  # distinct, non-trivial prompts (as trained ones would be)
            for p in gm.method.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * p.detach().float().std().clamp_min(0.1))
        gm.generation = gm.generation.model_copy(update={"max_new_tokens": 6})
        gm.save(out / name)
    return {name: out / name for name in specs}


def _engine(model_dir, arts, *, family=None, num_labels=None, **kw) -> ServeEngine:
    kw.setdefault("prompt_cache_min_tokens", 1)  # the tiny tasks' prompts are shorter than the break-even: cache them anyway
    eng = ServeEngine(Backbone.load(model_dir, family=family, num_labels=num_labels), **kw)
    for name, d in arts.items():
        eng.add(d, name=name)
    return eng


def _alone(arts, items, **options) -> list[str]:
    """Each task's GenerationModel, loaded alone, on its own inputs (in request order)."""
    out = [None] * len(items)
    for name, d in arts.items():
        idx = [i for i, (t, _) in enumerate(items) if t == name]
        for i, text in zip(idx, load(d).generate([items[i][1] for i in idx], **options)):
            out[i] = text
    return out


def _items(names):
    return [(n, s) for s in SOURCES for n in names]


@pytest.mark.parametrize("kind", ["llama", "gpt2", "t5"])
def test_mixed_generation_batch_equals_each_task_alone(saved_tiny, tmp_path, kind):
    arts = _write_generation_artifacts(saved_tiny(kind), tmp_path)
    eng = _engine(saved_tiny(kind), arts, start=False)
    items = _items(arts)
    got = eng.generate_mixed(items)
    want = _alone(arts, items)
    assert got == want
    assert len({t for t in got}) > 3  # the tasks' prompts really differ
    # Three tasks that share the input embeddings go through one generate() call; the prefix task through its own.
    assert eng.stats.snapshot()["forwards"] == 2
    assert eng.generate_mixed(items, max_new_tokens=3, num_beams=2) == _alone(arts, items, max_new_tokens=3, num_beams=2)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_generation_reuses_the_cached_prompt_with_the_texts_of_no_cache(saved_tiny, tmp_path, kind):
    arts = _write_generation_artifacts(saved_tiny(kind), tmp_path)
    on = _engine(saved_tiny(kind), arts, start=False)
    off = _engine(saved_tiny(kind), arts, prefix_cache=False, start=False)
    cached = {n: t.describe()["cached_prefix_tokens"] for n, t in on.tasks.items()}
    # copy: 4 soft tokens + "copy:" before the source; hand: "Repeat:"; a prefix task keeps its own keys/values
    assert cached["copy"] >= 5 and cached["echo"] >= 3 and cached["hand"] >= 1 and cached["deep"] == 0
    assert all(t.describe()["cached_prefix_tokens"] == 0 for t in off.tasks.values())
    items = _items(arts) + [("copy", "")]  # an empty source: only the last prompt token is computed
    for opts in ({}, {"num_beams": 3, "max_new_tokens": 4}, {"do_sample": True, "seed": 3, "temperature": 1.5}):
        assert on.generate_mixed(items, **opts) == off.generate_mixed(items, **opts)
    s_on, s_off = on.stats.snapshot(), off.stats.snapshot()
    assert s_off["prefix_tokens_reused"] == 0
    n_cached = sum(cached[t] for t, _ in items if t != "deep")
    assert s_on["prefix_tokens_reused"] == 3 * n_cached
    assert s_on["tokens_computed"] + s_on["prefix_tokens_reused"] == s_off["tokens_computed"]


def test_sampling_with_a_seed_gives_the_text_of_the_task_run_alone(saved_tiny, tmp_path):
    arts = _write_generation_artifacts(saved_tiny("llama"), tmp_path, {k: GEN_SPECS[k] for k in ("copy", "hand")})
    eng = _engine(saved_tiny("llama"), arts, max_wait_ms=20)
    try:
        opts = dict(do_sample=True, seed=7, temperature=1.5, max_new_tokens=8)
        f1 = eng.submit("copy", SOURCES, operation="generate", **opts)
        f2 = eng.submit("hand", SOURCES[:2], operation="generate", **opts)
        assert [r for r in f1.result(60)] == load(arts["copy"]).generate(SOURCES, **opts)
        assert [r for r in f2.result(60)] == load(arts["hand"]).generate(SOURCES[:2], **opts)
        assert eng.generate("copy", SOURCES, **opts) != eng.generate("copy", SOURCES, **{**opts, "seed": 8})
    finally:
        eng.close()


def test_classification_and_generation_requests_share_the_queue(saved_tiny, tmp_path):
    arts = _write_generation_artifacts(saved_tiny("llama"), tmp_path, {k: GEN_SPECS[k] for k in ("copy", "deep")})
    PromptModel(Backbone.load(saved_tiny("llama")), "{soft*2} Review: {text} is{mask}", {"n": "bad", "p": "good"}, "soft-prompt").save(tmp_path / "sst")
    eng = _engine(saved_tiny("llama"), {**arts, "sst": tmp_path / "sst"}, max_batch=64, max_wait_ms=50)
    try:
        texts = [r["text"] for r in toy_rows(6, seed=2)]
        f_gen = eng.submit("copy", SOURCES, operation="generate")
        f_cls = eng.submit("sst", texts)
        f_deep = eng.submit("deep", SOURCES[:3], operation="generate")
        assert f_gen.result(60) == load(arts["copy"]).generate(SOURCES)
        assert f_deep.result(60) == load(arts["deep"]).generate(SOURCES[:3])
        ref = load(tmp_path / "sst").predict_log_probs([{"text": t} for t in texts])
        torch.testing.assert_close(torch.stack(f_cls.result(60)), torch.stack(list(ref)), atol=1e-5, rtol=0)
        assert eng.stats.snapshot()["batches"] == 1  # one batch from the queue, run by kind
    finally:
        eng.close()


def test_generation_requests_are_checked_before_they_are_queued(saved_tiny, tmp_path):
    from prompttune.errors import ConfigError, TemplateError
    from prompttune.serve import UnsupportedError

    arts = _write_generation_artifacts(saved_tiny("llama"), tmp_path, {"copy": GEN_SPECS["copy"]})
    PromptModel(Backbone.load(saved_tiny("llama")), "Review: {text} is{mask}", {"n": "bad", "p": "good"}, "zero-shot").save(tmp_path / "sst")
    eng = _engine(saved_tiny("llama"), {**arts, "sst": tmp_path / "sst"}, start=False)
    with pytest.raises(ConfigError, match="unknown generation option.*'beams'"):
        eng.submit("copy", ["x"], operation="generate", beams=2)
    with pytest.raises(ConfigError, match="num_beams"):
        eng.submit("copy", ["x"], operation="generate", num_beams=0)
    with pytest.raises(TemplateError, match="no field 'src'"):
        eng.submit("copy", [{"text": "x"}], operation="generate")
    with pytest.raises(UnsupportedError, match="cannot predict") as e:
        eng.submit("copy", ["x"])
    assert e.value.implemented
    with pytest.raises(UnsupportedError, match="cannot generate"):
        eng.submit("sst", ["x"], operation="generate")
    assert eng.queue_depth() == 0
    d = eng.task("copy").describe()
    assert d["kind"] == "generation" and d["operations"] == ["generate"] and d["target"] == "tgt"
    assert d["fields"] == ["src"] and d["soft_tokens"] == 4 and d["generation"]["max_new_tokens"] == 6


def test_generation_artifact_of_a_trained_backbone_or_another_model_is_refused(saved_tiny, tmp_path):
    gm = GenerationModel(Backbone.load(saved_tiny("gpt2")), "copy: {src} =>", target="tgt", method="soft-prompt")
    gm.save(tmp_path / "gpt2")
    ft = GenerationModel(Backbone.load(saved_tiny("llama")), "copy: {src} =>", target="tgt", method="prompt-finetune")
    ft.save(tmp_path / "ft")
    eng = ServeEngine(Backbone.load(saved_tiny("llama")), start=False)
    with pytest.raises(TaskConflictError, match="fingerprint"):
        eng.add(tmp_path / "gpt2")
    with pytest.raises(TaskConflictError, match="trains the backbone"):
        eng.add(tmp_path / "ft")
    assert eng.tasks == {}


# ---- HTTP -----------------------------------------------------------------------------------------------
def test_http_generate_answers_with_the_task_alone_texts_and_clear_errors(saved_tiny, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from prompttune.serve.app import create_app

    arts = _write_generation_artifacts(saved_tiny("llama"), tmp_path, {k: GEN_SPECS[k] for k in ("copy", "deep")})
    PromptModel(Backbone.load(saved_tiny("llama")), "Review: {text} is{mask}", {"n": "bad", "p": "good"}, "zero-shot").save(tmp_path / "sst")
    eng = _engine(saved_tiny("llama"), {**arts, "sst": tmp_path / "sst"}, max_wait_ms=2)
    with TestClient(create_app(eng)) as c:
        r = c.post("/v1/tasks/copy/generate", json={"inputs": SOURCES, "max_new_tokens": 4, "stop": ["zzz"]})
        assert r.status_code == 200, r.text
        assert [o["text"] for o in r.json()["outputs"]] == load(arts["copy"]).generate(SOURCES, max_new_tokens=4, stop=["zzz"])
        r = c.post("/v1/tasks/deep/generate", json={"input": {"src": "good film"}})
        assert r.json()["outputs"][0]["text"] == load(arts["deep"]).generate(["good film"])[0]
        for path, body, status, needle in [
            ("/v1/tasks/copy/generate", {"input": "x", "num_beams": 0}, 422, "num_beams"),
            ("/v1/tasks/copy/generate", {"input": "x", "temperature": -1}, 422, "temperature"),
            ("/v1/tasks/copy/generate", {"input": "x", "beams": 2}, 422, "beams"),
            ("/v1/tasks/copy/generate", {"input": {"text": "x"}}, 422, "no field 'src'"),
            ("/v1/tasks/copy/predict", {"input": "x"}, 400, "cannot predict"),
            ("/v1/tasks/sst/generate", {"input": "x"}, 400, "cannot generate"),
            ("/v1/predict", {"requests": [{"task": "copy", "input": "x"}]}, 400, "cannot predict"),
        ]:
            r = c.post(path, json=body)
            assert r.status_code == status and needle in r.text, (path, body, r.status_code, r.text)
        tasks = {t["name"]: t for t in c.get("/v1/tasks").json()["tasks"]}
        assert tasks["copy"]["kind"] == "generation" and tasks["sst"]["kind"] == "classification"
        assert "/v1/tasks/{task}/generate" in c.get("/openapi.json").json()["paths"]
        assert c.get("/health").json()["status"] == "ok"


# ---- encoder + head -------------------------------------------------------------------------------------
def test_encoder_head_tasks_each_keep_their_own_head(saved_tiny, tmp_path):
    d = saved_tiny("bert-head")
    arts = {}
    for k, (tpl, method) in enumerate([("{soft*2} {text}", "soft-prompt"), ("{text} !", "soft-prompt"), ("{text}", "zero-shot")]):
        pm = PromptModel(Backbone.load(d, family="encoder-head", num_labels=2), tpl, {"n": "bad", "p": "good"}, method, seed=k)
        with torch.no_grad():  # a trained head differs from the model's own
            for p in pm.method._head.values():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(k)))
        pm.save(tmp_path / f"t{k}")
        arts[f"t{k}"] = tmp_path / f"t{k}"
    eng = _engine(d, arts, family="encoder-head", num_labels=2, start=False)
    items = [(name, r["text"]) for r in toy_rows(6, seed=4) for name in arts]
    got = eng.log_probs_mixed(items)
    for name, path in arts.items():
        idx = [i for i, (t, _) in enumerate(items) if t == name]
        ref = load(path).predict_log_probs([{"text": items[i][1]} for i in idx])
        torch.testing.assert_close(torch.stack([got[i] for i in idx]), torch.stack(list(ref)), atol=1e-5, rtol=0)
    assert not torch.allclose(got[0], got[1])  # different heads, different answers
    assert eng.stats.snapshot()["forwards"] == 3  # one forward per task, each with its own head


def test_an_encoder_head_artifact_with_another_label_count_is_refused(saved_tiny, tmp_path):
    d = saved_tiny("bert-head")
    eng = ServeEngine(Backbone.load(d, family="encoder-head", num_labels=2), start=False)
    three = PromptModel(Backbone.load(d, family="encoder-head", num_labels=3), "{text}", {"a": "a", "b": "b", "c": "c"}, "soft-prompt")
    three.save(tmp_path / "three")
    assert three.backbone.model.classifier.weight.shape == (3, 32)  # a checkpoint with a 2-label head gets a fresh 3-label one
    assert torch.equal(three.backbone.model.bert.embeddings.word_embeddings.weight, eng.backbone.model.bert.embeddings.word_embeddings.weight)
    with pytest.raises(TaskConflictError, match="3 labels.*head has 2"):
        eng.add(tmp_path / "three")


def test_prompttune_serve_loads_a_generation_artifact_beside_a_classification_one(saved_tiny, tmp_path, monkeypatch):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    import prompttune.serve.app as app_mod
    from prompttune.cli import app as cli_app

    arts = _write_generation_artifacts(saved_tiny("llama"), tmp_path, {"copy": GEN_SPECS["copy"]})
    PromptModel(Backbone.load(saved_tiny("llama")), "Review: {text} is{mask}", {"n": "bad", "p": "good"}, "zero-shot").save(tmp_path / "sst")
    seen = {}

    def fake_serve(engine, *, host, port, on_shutdown, **kw):  # drive the app in-process instead of uvicorn.run
        with TestClient(app_mod.create_app(engine, **kw)) as c:
            seen["text"] = c.post("/v1/tasks/copy/generate", json={"input": "good film"}).json()["outputs"][0]["text"]
            seen["label"] = c.post("/v1/tasks/sst/predict", json={"input": "good film"}).json()["predictions"][0]["label"]
        on_shutdown()
        engine.close()

    monkeypatch.setattr(app_mod, "serve", fake_serve)
    res = CliRunner().invoke(cli_app, ["serve", str(arts["copy"]), str(tmp_path / "sst")])
    assert res.exit_code == 0, res.output
    assert "task copy: generation, generates 'tgt' from ['src']" in res.output and "task sst: classification, labels ['n', 'p']" in res.output
    assert seen["text"] == load(arts["copy"]).generate(["good film"])[0] and seen["label"] in ("n", "p")
