"""Serving many tuned prompts on one frozen backbone: mixed-task batches, prompt caching, the HTTP service."""

from __future__ import annotations

import json
import random
import threading
import time

import pytest
import torch

from conftest import toy_rows
from prompttune import PromptModel, load
from prompttune.backbone import Backbone
from prompttune.serve import ServeEngine, TaskConflictError, UnknownTaskError

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from prompttune.serve.app import create_app  # noqa: E402

# name -> (template, verbalizer, method options). a, b: one-token words with nothing after the mask (the fast path);
# c: multi-token words and text after the mask, d: two fields (the likelihood path).
SPECS = {
    "sst": ("{soft*4} Review: {text} Sentiment: {mask}", {"negative": "bad", "positive": "good"}, {}),
    "topic": ("Topic of {text} is{mask}", {"movie": "movie", "plot": "plot", "story": "story"}, {"num_tokens": 3, "init": "random"}),
    "long": ("{soft*2} {text} It was {mask} indeed.", {"neg": "terrible awful", "pos": "very good"}, {"encoder": "mlp"}),
    "nli": ("{soft*2} {premise} ? {mask} , {hypothesis}", {"no": "no", "yes": "yes"}, {"init": "vocab"}),
}
FAST = ("sst", "topic")


def _write_artifacts(model_dir, out, *, specs=SPECS):
    for seed, (name, (tpl, verb, opts)) in enumerate(specs.items()):
        pm = PromptModel(Backbone.load(model_dir), tpl, verb, "soft-prompt", method_options=opts, seed=seed + 1)
        if pm.method.soft is not None:
            with torch.no_grad():  # distinct, non-trivial tables (as trained ones would be)
                pm.method.soft.weight.add_(torch.randn(pm.method.soft.weight.shape, generator=torch.Generator().manual_seed(seed)))
        if name == "sst":
            pm.verbalizer.calibration = [0.2, -0.3]
        pm.save(out / name)
    return {name: out / name for name in specs}


@pytest.fixture(scope="module")
def artifacts(saved_tiny, tmp_path_factory):
    return _write_artifacts(saved_tiny("llama"), tmp_path_factory.mktemp("serve-artifacts"))


def _engine(model_dir, arts, **kw) -> ServeEngine:
    kw.setdefault("prompt_cache_min_tokens", 1)  # the tiny tasks' prompts are shorter than the break-even: cache them anyway
    eng = ServeEngine(Backbone.load(model_dir), **kw)
    for name, d in arts.items():
        eng.add(d, name=name)
    return eng


def _inputs(n: int, seed: int = 3):
    """(task, input) pairs interleaving every task, and the same grouped per task as template rows."""
    items = []
    for r in toy_rows(n, seed=seed):
        items += [("sst", r["text"]), ("topic", r["text"]), ("long", r["text"]),
                  ("nli", {"premise": r["text"], "hypothesis": "it was " + r["text"].split()[0]})]
    return items


def _reference(arts, items) -> torch.Tensor:
    """Each task's PromptModel, loaded alone, on its own inputs (scattered back into request order)."""
    out = [None] * len(items)
    for name, d in arts.items():
        pm = load(d)
        idx = [i for i, (t, _) in enumerate(items) if t == name]
        rows = [items[i][1] if isinstance(items[i][1], dict) else {"text": items[i][1]} for i in idx]
        for i, lp in zip(idx, pm.predict_log_probs(rows, batch_size=4)):
            out[i] = lp
    return out


def _count_forwards(engine) -> list:
    calls = []
    engine.backbone.model.base_model.register_forward_pre_hook(lambda *a, **k: calls.append(1))
    return calls


def _assert_matches(items, got, ref):
    for (task, _), g, r in zip(items, got, ref):
        # The likelihood path sums per-token log-softmaxes over the whole vocabulary of a model with large random
        # weights; padding the batch differently moves those sums by a few 1e-6.
        tol = 1e-5 if task in FAST else 5e-5
        torch.testing.assert_close(g, r, atol=tol, rtol=0)


@pytest.mark.parametrize("prefix_cache", [False, True])
def test_mixed_task_batch_equals_each_task_alone(saved_tiny, artifacts, prefix_cache):
    eng = _engine(saved_tiny("llama"), artifacts, prefix_cache=prefix_cache, start=False)
    items = _inputs(5)
    calls = _count_forwards(eng)
    got = eng.log_probs_mixed(items)
    _assert_matches(items, got, _reference(artifacts, items))
    assert len(calls) == 2  # one forward for the fast-path rows of two tasks, one for the likelihood rows of two
    calls.clear()
    fast_items = [it for it in items if it[0] in FAST]
    eng.log_probs_mixed(fast_items)
    assert len(calls) == 1  # two tasks, two soft prompts, two verbalizers: one forward pass


@pytest.mark.parametrize("kind", ["gpt2", "bert-mlm", "t5"])
def test_mixed_batches_match_on_every_family(saved_tiny, tmp_path, kind):
    arts = _write_artifacts(saved_tiny(kind), tmp_path)
    eng = _engine(saved_tiny(kind), arts, start=False)
    items = _inputs(3)
    _assert_matches(items, eng.log_probs_mixed(items), _reference(arts, items))


def test_prompt_cache_gives_the_same_scores_and_skips_the_prompt_tokens(saved_tiny, artifacts):
    on = _engine(saved_tiny("llama"), artifacts, prefix_cache=True, start=False)
    off = _engine(saved_tiny("llama"), artifacts, prefix_cache=False, start=False)
    cached = {n: t.describe()["cached_prefix_tokens"] for n, t in on.tasks.items()}
    # sst: 4 soft tokens + "Review:" before the first field; topic: 3 soft tokens (prefix placement) + "Topic of"
    assert cached["sst"] >= 5 and cached["topic"] >= 4 and cached["long"] == 2 and cached["nli"] == 2
    assert all(t.describe()["cached_prefix_tokens"] == 0 for t in off.tasks.values())
    items = _inputs(6, seed=11)
    a, b = on.log_probs_mixed(items), off.log_probs_mixed(items)
    _assert_matches(items, a, b)
    s_on, s_off = on.stats.snapshot(), off.stats.snapshot()
    assert s_on["prefix_tokens_reused"] > 0 and s_off["prefix_tokens_reused"] == 0
    assert s_on["tokens_computed"] + s_on["prefix_tokens_reused"] == s_off["tokens_computed"]


def test_a_shared_prompt_shorter_than_the_break_even_is_not_cached(saved_tiny, artifacts):
    eng = ServeEngine(Backbone.load(saved_tiny("llama")), start=False)  # the default prompt_cache_min_tokens
    for name, d in artifacts.items():
        eng.add(d, name=name)
    cached = {n: t.describe()["cached_prefix_tokens"] for n, t in eng.tasks.items()}
    assert eng.prompt_cache_min_tokens > 2 and cached["long"] == 0 and cached["nli"] == 0  # 2 soft tokens each
    items = _inputs(4, seed=5)
    _assert_matches(items, eng.log_probs_mixed(items), _reference(artifacts, items))


def test_length_groups_cut_a_batch_where_padding_costs_more_than_a_forward():
    from prompttune.serve.tasks import length_groups

    assert length_groups([80, 10, 80, 10], overhead=48) == [[0, 2], [1, 3]]  # 4 x 80 = 320 > 48 + 160 + 48 + 20
    assert length_groups([80, 10, 80, 10], overhead=200) == [[0, 2, 1, 3]]  # one more forward costs more than the padding
    assert length_groups([30, 31, 29], overhead=48) == [[1, 0, 2]]
    assert length_groups([80, 10], overhead=0) == [[0, 1]] and length_groups([], overhead=48) == []
    rng = random.Random(0)
    for _ in range(200):  # every index exactly once, groups longest first, and never dearer than one group
        lengths = [rng.randint(1, 120) for _ in range(rng.randint(1, 40))]
        ov = rng.choice([1, 10, 48, 500])
        groups = length_groups(lengths, overhead=ov)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        firsts = [lengths[g[0]] for g in groups]
        assert firsts == sorted(firsts, reverse=True)
        cost = sum(ov + len(g) * max(lengths[i] for i in g) for g in groups)
        assert cost <= ov + len(lengths) * max(lengths)


def test_a_batch_of_short_and_long_inputs_runs_as_forwards_of_similar_lengths(saved_tiny, artifacts):
    eng = _engine(saved_tiny("llama"), {"sst": artifacts["sst"]}, forward_overhead_tokens=4, start=False)
    long_text = " ".join(["the plot was good but the actor was bad"] * 6)
    items = [("sst", "good"), ("sst", long_text), ("sst", "bad"), ("sst", long_text)]
    calls = _count_forwards(eng)
    got = eng.log_probs_mixed(items)
    assert len(calls) == 2  # the two short rows together, the two long ones together
    _assert_matches(items, got, _reference({"sst": artifacts["sst"]}, items))
    s = eng.stats.snapshot()
    one = _engine(saved_tiny("llama"), {"sst": artifacts["sst"]}, forward_overhead_tokens=0, start=False)
    one.log_probs_mixed(items)
    assert s["tokens_computed"] == one.stats.snapshot()["tokens_computed"]  # the same real tokens, less padding


def test_cached_prefix_is_used_only_when_the_input_really_starts_with_it(saved_tiny, artifacts):
    eng = _engine(saved_tiny("llama"), {"sst": artifacts["sst"]}, start=False)
    t = eng.tasks["sst"]
    r = t.make_jobs("predict", ["good"])[0]
    assert t.prefix_len(r) == len(t.prefix_ids) > 0
    r.ids[len(t.prefix_ids) - 1] += 1  # an input whose tokens merge into the prompt differently is computed whole
    assert t.prefix_len(r) == 0


def test_queued_requests_from_several_tasks_share_one_batch(saved_tiny, artifacts):
    eng = _engine(saved_tiny("llama"), artifacts, max_batch=4, max_wait_ms=5000)
    try:
        calls = _count_forwards(eng)
        futs = [eng.submit("sst", ["good film"]), eng.submit("topic", ["the plot"]),
                eng.submit("sst", ["bad"]), eng.submit("topic", ["a movie"])]
        results = [f.result(30)[0] for f in futs]
        s = eng.stats.snapshot()
        assert s["batches"] == 1 and s["batch_inputs"] == 4 and len(calls) == 1
        ref = _reference(artifacts, [("sst", "good film"), ("topic", "the plot"), ("sst", "bad"), ("topic", "a movie")])
        for g, r in zip(results, ref):
            torch.testing.assert_close(g, r, atol=1e-5, rtol=0)
    finally:
        eng.close()


def test_max_batch_splits_a_large_request_and_keeps_its_order(saved_tiny, artifacts):
    eng = _engine(saved_tiny("llama"), {"sst": artifacts["sst"]}, max_batch=3, max_wait_ms=1)
    try:
        texts = [r["text"] for r in toy_rows(10, seed=5)]
        got = torch.stack(eng.submit("sst", texts).result(30))
        s = eng.stats.snapshot()
        assert s["batch_inputs"] == 10 and s["batches"] >= 4 and s["batch_hist"][2] + s["batch_hist"][1] <= s["batches"]
        torch.testing.assert_close(got, torch.stack(_reference({"sst": artifacts["sst"]}, [("sst", t) for t in texts])), atol=1e-5, rtol=0)
    finally:
        eng.close()


def test_artifacts_of_another_backbone_or_a_trained_backbone_are_refused(saved_tiny, artifacts, tmp_path):
    other = Backbone.load(saved_tiny("llama"))
    with torch.no_grad():
        other.model.get_input_embeddings().weight.mul_(1.5)
    PromptModel(other, "{soft*2} {text} is{mask}", {"n": "bad", "p": "good"}, "soft-prompt").save(tmp_path / "other")
    pf = PromptModel(Backbone.load(saved_tiny("llama")), "{text} is{mask}", {"n": "bad", "p": "good"}, "prompt-finetune")
    pf.save(tmp_path / "pf")
    eng = _engine(saved_tiny("llama"), {"sst": artifacts["sst"]}, start=False)
    with pytest.raises(TaskConflictError, match="fingerprint"):
        eng.add(tmp_path / "other")
    with pytest.raises(TaskConflictError, match="trains the backbone"):
        eng.add(tmp_path / "pf")
    import shutil

    shutil.copytree(artifacts["sst"], tmp_path / "deep")
    meta = json.loads((tmp_path / "deep" / "prompt.json").read_text())
    meta["method"]["name"] = "deep-prompt"  # a method whose prompt does not enter through the input embeddings
    (tmp_path / "deep" / "prompt.json").write_text(json.dumps(meta))
    with pytest.raises(TaskConflictError, match="not supported by the serving engine"):
        eng.add(tmp_path / "deep")
    PromptModel(Backbone.load(saved_tiny("llama")), "Review: {text} is{mask}", {"n": "bad", "p": "good"}, "zero-shot").save(tmp_path / "zs")
    assert eng.add(tmp_path / "zs").describe()["soft_tokens"] == 0
    eng.remove("zs")
    with pytest.raises(TaskConflictError, match="already loaded"):
        eng.add(artifacts["sst"], name="sst")
    assert list(eng.tasks) == ["sst"]
    eng.remove("sst")
    with pytest.raises(UnknownTaskError, match="no task named 'sst'"):
        eng.predict_mixed([("sst", "good")])


# ---- HTTP ---------------------------------------------------------------------------------------------
@pytest.fixture()
def client(saved_tiny, artifacts):
    eng = _engine(saved_tiny("llama"), artifacts, max_batch=8, max_wait_ms=2)
    with TestClient(create_app(eng, max_body_bytes=4000, max_inputs=5, allow_admin=True)) as c:
        c.engine = eng
        yield c
    eng.close()


def test_admin_routes_are_off_by_default_and_say_how_to_turn_them_on(saved_tiny, artifacts):
    eng = _engine(saved_tiny("llama"), {"sst": artifacts["sst"]})
    with TestClient(create_app(eng)) as c:
        for r in (c.post("/v1/tasks", json={"path": str(artifacts["topic"]), "name": "topic"}), c.delete("/v1/tasks/sst")):
            assert r.status_code == 403, r.text
            assert "off" in r.json()["detail"] and "--admin" in r.json()["fix"]
        assert [t["name"] for t in c.get("/v1/tasks").json()["tasks"]] == ["sst"]  # nothing was loaded or removed
        paths = c.get("/openapi.json").json()["paths"]
        assert "post" not in paths["/v1/tasks"] and "delete" not in paths["/v1/tasks/{task}"]
    with TestClient(create_app(eng, api_key="k", allow_admin=True)) as c:  # on, behind the key like every route
        assert c.post("/v1/tasks", json={"path": str(artifacts["topic"])}).status_code == 401
        r = c.post("/v1/tasks", json={"path": str(artifacts["topic"]), "name": "topic"}, headers={"Authorization": "Bearer k"})
        assert r.status_code == 201 and r.json()["name"] == "topic"
        assert c.delete("/v1/tasks/topic", headers={"Authorization": "Bearer k"}).json() == {"removed": "topic"}
    eng.close()


@pytest.mark.parametrize("flag,status", [([], 403), (["--admin"], 201)])
def test_prompttune_serve_turns_admin_routes_on_only_with_the_admin_flag(artifacts, monkeypatch, flag, status):
    from typer.testing import CliRunner

    import prompttune.serve.app as app_mod
    from prompttune.cli import app as cli_app

    seen = {}

    def fake_serve(engine, *, host, port, on_shutdown, **kw):
        with TestClient(create_app(engine, **kw)) as c:
            seen["add"] = c.post("/v1/tasks", json={"path": str(artifacts["topic"]), "name": "topic"}).status_code
        engine.close()

    monkeypatch.setattr(app_mod, "serve", fake_serve)
    res = CliRunner().invoke(cli_app, ["serve", str(artifacts["sst"]), *flag])
    assert res.exit_code == 0, res.output
    assert seen["add"] == status
    assert ("admin routes on" in res.output) == bool(flag)


def test_http_lists_tasks_with_labels_and_metadata(client):
    r = client.get("/v1/tasks")
    assert r.status_code == 200
    tasks = {t["name"]: t for t in r.json()["tasks"]}
    assert set(tasks) == set(SPECS)
    assert tasks["topic"]["labels"] == ["movie", "plot", "story"] and tasks["nli"]["fields"] == ["premise", "hypothesis"]
    assert tasks["sst"]["method"]["name"] == "soft-prompt" and tasks["sst"]["calibrated"] is True
    assert tasks["sst"]["soft_tokens"] == 4 and tasks["sst"]["cached_prefix_tokens"] > 0
    assert client.get("/v1/tasks/nli").json()["template"] == SPECS["nli"][0]
    assert client.get("/health").json() == {"status": "ok", "backbone": client.engine.backbone.name, "family": "causal-lm", "tasks": 4}


def test_http_predict_one_and_a_batch_match_the_prompt_model(client, artifacts):
    pm = load(artifacts["sst"])
    texts = ["the film was good", "awful plot", "very nice"]
    want = pm.predict(texts)
    r = client.post("/v1/tasks/sst/predict", json={"inputs": texts})
    assert r.status_code == 200 and r.json()["task"] == "sst"
    got = r.json()["predictions"]
    assert [g["label"] for g in got] == [w["label"] for w in want]
    for g, w in zip(got, want):
        assert g["probabilities"] == pytest.approx(w["probabilities"], abs=2e-6)
    one = client.post("/v1/tasks/sst/predict", json={"input": texts[0]}).json()["predictions"]
    assert one[0]["probabilities"] == pytest.approx(want[0]["probabilities"], abs=2e-6)
    nli = client.post("/v1/tasks/nli/predict", json={"input": {"premise": "good film", "hypothesis": "it was good"}})
    assert nli.status_code == 200 and set(nli.json()["predictions"][0]["probabilities"]) == {"no", "yes"}


def test_http_mixed_request_answers_each_task_with_its_own_labels(client):
    reqs = [{"task": "sst", "input": "good"}, {"task": "topic", "input": "the plot"},
            {"task": "nli", "input": {"premise": "a", "hypothesis": "b"}}]
    r = client.post("/v1/predict", json={"requests": reqs})
    assert r.status_code == 200
    res = r.json()["results"]
    assert [x["task"] for x in res] == ["sst", "topic", "nli"]
    assert [sorted(x["probabilities"]) for x in res] == [["negative", "positive"], ["movie", "plot", "story"], ["no", "yes"]]
    want = client.engine.predict_mixed([(q["task"], q["input"]) for q in reqs])
    for x, w in zip(res, want):
        assert x["probabilities"] == pytest.approx(w["probabilities"], abs=2e-6)


@pytest.mark.parametrize("method,path,body,status,needle", [
    ("post", "/v1/tasks/nope/predict", {"inputs": ["x"]}, 404, "no task named 'nope'"),
    ("get", "/v1/tasks/nope", None, 404, "no task named"),
    ("post", "/v1/tasks/sst/predict", {}, 422, "exactly one of"),
    ("post", "/v1/tasks/sst/predict", {"inputs": []}, 422, "at least 1"),
    ("post", "/v1/tasks/sst/predict", {"inputs": [5]}, 422, "inputs"),
    ("post", "/v1/tasks/sst/predict", {"inputs": ["x"], "temperature": 1}, 422, "temperature"),
    ("post", "/v1/tasks/nli/predict", {"input": {"premise": "good"}}, 422, "no field 'hypothesis'"),
    ("post", "/v1/tasks/nli/predict", {"input": "a bare string"}, 422, "fields"),
    ("post", "/v1/tasks/sst/predict", {"inputs": ["x"] * 6}, 413, "limit is 5"),
    ("post", "/v1/tasks/sst/predict", {"inputs": ["x" * 5000]}, 413, "larger than 4000 bytes"),
    ("post", "/v1/predict", {"requests": [{"task": "sst", "input": "a"}, {"task": "zzz", "input": "b"}]}, 404, "zzz"),
    ("post", "/v1/tasks/sst/generate", {"input": "x"}, 400, "cannot generate"),
    ("post", "/v1/tasks/nope/generate", {"input": "x"}, 404, "no task named"),
    ("post", "/v1/tasks", {"path": "/no/such/dir"}, 400, "not a prompttune artifact"),
    ("delete", "/v1/tasks/nope", None, 404, "no task named"),
])
def test_bad_requests_get_clear_errors_and_the_service_stays_up(client, method, path, body, status, needle):
    r = getattr(client, method)(path, **({"json": body} if body is not None else {}))
    assert r.status_code == status, r.text
    assert needle in json.dumps(r.json())
    assert client.post("/v1/tasks/sst/predict", json={"input": "good"}).status_code == 200
    assert client.get("/health").status_code == 200


def test_malformed_json_is_a_400(client):
    r = client.post("/v1/tasks/sst/predict", content=b'{"inputs": ["x"', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
    assert client.post("/v1/tasks/sst/predict", json={"input": "good"}).status_code == 200


def test_chunked_body_over_the_limit_is_a_413(client):
    def chunks():
        for _ in range(10):
            yield b" " * 1000
    r = client.post("/v1/tasks/sst/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_full_queue_answers_503_with_retry_after(saved_tiny, artifacts):
    eng = _engine(saved_tiny("llama"), {"sst": artifacts["sst"]}, max_queue=3, start=False)  # no worker: nothing drains
    with TestClient(create_app(eng)) as c:
        eng.submit("sst", ["a", "b"])
        r = c.post("/v1/tasks/sst/predict", json={"inputs": ["c", "d"]})
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1 and "queue is full" in r.json()["detail"]
        mixed = c.post("/v1/predict", json={"requests": [{"task": "sst", "input": "e"}, {"task": "sst", "input": "f"}]})
        assert mixed.status_code == 503 and eng.queue_depth() == 2  # all or nothing: no half-queued request
        assert c.get("/health").status_code == 200
        eng.start()
        assert c.post("/v1/tasks/sst/predict", json={"input": "c"}).status_code == 200
    eng.close()


def test_api_key_guards_every_route_but_health(saved_tiny, artifacts):
    eng = _engine(saved_tiny("llama"), {"sst": artifacts["sst"]})
    with TestClient(create_app(eng, api_key="s3cret")) as c:
        assert c.get("/health").status_code == 200
        for path in ("/v1/tasks", "/metrics", "/openapi.json"):
            r = c.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.post("/v1/tasks/sst/predict", json={"input": "x"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = c.post("/v1/tasks/sst/predict", json={"input": "x"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        spec = c.get("/openapi.json", headers={"Authorization": "Bearer s3cret"}).json()
        assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        assert spec["paths"]["/health"]["get"]["security"] == [] and spec["paths"]["/v1/tasks"]["get"]["security"] == [{"bearer": []}]
    eng.close()


def test_add_and_remove_artifacts_at_run_time(client, artifacts, saved_tiny, tmp_path):
    assert client.delete("/v1/tasks/topic").json() == {"removed": "topic"}
    assert client.post("/v1/tasks/topic/predict", json={"input": "x"}).status_code == 404
    r = client.post("/v1/tasks", json={"path": str(artifacts["topic"]), "name": "topic2"})
    assert r.status_code == 201 and r.json()["labels"] == ["movie", "plot", "story"]
    assert client.post("/v1/tasks/topic2/predict", json={"input": "the plot"}).status_code == 200
    other = Backbone.load(saved_tiny("llama"))
    with torch.no_grad():
        other.model.get_input_embeddings().weight.mul_(1.5)
    PromptModel(other, "{soft*2} {text} is{mask}", {"n": "bad", "p": "good"}, "soft-prompt").save(tmp_path / "other")
    r = client.post("/v1/tasks", json={"path": str(tmp_path / "other")})
    assert r.status_code == 409 and "fingerprint" in r.json()["detail"]
    assert client.post("/v1/tasks", json={"path": str(artifacts["sst"]), "name": "sst"}).status_code == 409
    assert sorted(t["name"] for t in client.get("/v1/tasks").json()["tasks"]) == ["long", "nli", "sst", "topic2"]


def test_metrics_count_requests_batches_latency_and_reused_tokens(client):
    for _ in range(3):
        client.post("/v1/tasks/sst/predict", json={"inputs": ["good", "bad"]})
    client.post("/v1/tasks/nope/predict", json={"inputs": ["x"]})
    text = client.get("/metrics").text
    assert 'prompttune_inputs_total{task="sst"} 6' in text
    assert 'prompttune_http_requests_total{method="POST",route="/v1/tasks/{task}/predict",status="200"} 3' in text
    assert 'prompttune_http_requests_total{method="POST",route="/v1/tasks/{task}/predict",status="404"} 1' in text
    assert 'prompttune_request_latency_seconds_count{route="/v1/tasks/{task}/predict"} 3' in text
    assert "prompttune_batch_size_sum 6" in text
    reused = next(float(l.split()[-1]) for l in text.splitlines() if l.startswith("prompttune_prefix_tokens_reused_total"))
    assert reused == 6 * client.engine.tasks["sst"].describe()["cached_prefix_tokens"]


def test_openapi_schema_lists_every_route(client):  # the client has the admin routes on
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for p, m in [("/health", "get"), ("/metrics", "get"), ("/v1/tasks", "get"), ("/v1/tasks", "post"), ("/v1/tasks/{task}", "get"),
                 ("/v1/tasks/{task}", "delete"), ("/v1/tasks/{task}/predict", "post"), ("/v1/predict", "post"),
                 ("/v1/tasks/{task}/generate", "post")]:
        assert m in paths[p], (p, m)
    assert "PredictRequest" in spec["components"]["schemas"]
    assert "413" in paths["/v1/tasks/{task}/predict"]["post"]["responses"]


def test_concurrent_clients_of_several_tasks_get_every_answer_once(saved_tiny, artifacts):
    import httpx
    import uvicorn

    eng = _engine(saved_tiny("llama"), artifacts, max_batch=16, max_wait_ms=3)
    server = uvicorn.Server(uvicorn.Config(create_app(eng), host="127.0.0.1", port=0, log_level="error"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    try:
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        items = _inputs(8, seed=21)  # 32 requests over 4 tasks
        ref = _reference(artifacts, items)
        answers: dict[int, dict] = {}
        errors = []

        def client_thread(k: int):
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
                for i in range(k, len(items), 6):
                    task, x = items[i]
                    r = c.post(f"/v1/tasks/{task}/predict", json={"input": x})
                    if r.status_code != 200:
                        errors.append(r.text)
                    elif i in answers:
                        errors.append(f"answered twice: {i}")
                    else:
                        answers[i] = r.json()

        threads = [threading.Thread(target=client_thread, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        assert sorted(answers) == list(range(len(items)))
        for i, (task, _) in enumerate(items):
            labels = list(answers[i]["predictions"][0]["probabilities"])
            probs = torch.tensor([answers[i]["predictions"][0]["probabilities"][l] for l in labels])
            assert answers[i]["task"] == task
            torch.testing.assert_close(probs, ref[i].exp(), atol=5e-5, rtol=0)
        s = eng.stats.snapshot()
        assert s["batch_inputs"] == len(items)  # each input ran exactly once
        assert s["inputs_by_task"] == {t: 8 for t in SPECS}
    finally:
        server.should_exit = True
        th.join(10)
        eng.close()


def test_prompttune_serve_command_wires_the_options_into_the_engine_and_app(artifacts, monkeypatch):
    from typer.testing import CliRunner

    import prompttune.serve.app as app_mod
    from prompttune.cli import app as cli_app

    seen = {}

    def fake_serve(engine, *, host, port, on_shutdown, **kw):  # instead of uvicorn.run: drive the app in-process
        seen.update(host=host, port=port, engine=engine)
        with TestClient(create_app(engine, **kw)) as c:
            seen["unauth"] = c.get("/v1/tasks").status_code
            seen["tasks"] = [t["name"] for t in c.get("/v1/tasks", headers={"Authorization": "Bearer k"}).json()["tasks"]]
            seen["too_many"] = c.post("/v1/tasks/sst/predict", json={"inputs": ["a"] * 3}, headers={"Authorization": "Bearer k"}).status_code
            seen["ok"] = c.post("/v1/tasks/sst/predict", json={"inputs": ["a"] * 2}, headers={"Authorization": "Bearer k"}).status_code
        on_shutdown()
        engine.close()

    monkeypatch.setattr(app_mod, "serve", fake_serve)
    res = CliRunner().invoke(cli_app, ["serve", str(artifacts["sst"]), str(artifacts["nli"]), "--port", "9123", "--api-key", "k",
                                       "--max-batch", "4", "--max-wait-ms", "7", "--max-inputs", "2", "--no-prefix-cache"])
    assert res.exit_code == 0, res.output
    eng = seen["engine"]
    assert (seen["host"], seen["port"], eng.max_batch, eng.max_wait, eng.prefix_cache) == ("127.0.0.1", 9123, 4, 0.007, False)
    assert seen["unauth"] == 401 and seen["tasks"] == ["nli", "sst"] and seen["too_many"] == 413 and seen["ok"] == 200
    assert "serving 2 task(s)" in res.output and "2 inputs in 1 batches" in res.output


def test_python_callers_on_several_threads_get_their_own_answers(saved_tiny, artifacts):
    eng = _engine(saved_tiny("llama"), artifacts, max_batch=8, max_wait_ms=2)
    items = _inputs(6, seed=31)
    ref = _reference(artifacts, items)
    got: dict[int, torch.Tensor] = {}
    errors = []

    def caller(k: int):
        try:
            for i in range(k, len(items), 8):
                task, x = items[i]
                got[i] = eng.submit(task, [x]).result(60)[0]
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    eng.close()
    assert not errors and sorted(got) == list(range(len(items)))
    _assert_matches(items, [got[i] for i in range(len(items))], ref)
    assert eng.stats.snapshot()["batch_inputs"] == len(items)


@pytest.mark.parametrize("prefix_cache", [False, True])
def test_a_prefix_task_is_served_beside_soft_prompt_tasks_with_the_same_scores_as_alone(saved_tiny, artifacts, tmp_path, prefix_cache):
    pm = PromptModel(Backbone.load(saved_tiny("llama")), "Review: {text} Sentiment: {mask}", {"negative": "bad", "positive": "good"},
                     "prefix", method_options={"init": "random", "num_tokens": 3})
    pm.save(tmp_path / "deep")
    arts = {"sst": artifacts["sst"], "nli": artifacts["nli"], "deep": tmp_path / "deep"}
    eng = _engine(saved_tiny("llama"), arts, prefix_cache=prefix_cache, start=False)
    items = [it for it in _inputs(4) if it[0] in ("sst", "nli")]
    items += [("deep", r["text"]) for r in toy_rows(4, seed=5)]
    items = items[::2] + items[1::2]  # interleave the tasks
    _assert_matches(items, eng.log_probs_mixed(items), _reference(arts, items))
