"""Load test of `prompttune serve`: mixed traffic over 4 tasks against a server on 127.0.0.1, repeated.

Four servers are started (uvicorn, in this process, each on a free port) with the same four soft-prompt tasks on
the same backbone, and warmed up (not counted). The same request stream (one input per request, tasks interleaved)
is then replayed against each by a load generator in its own process (`load_client.py`, ``--concurrency``
client threads over HTTP), ``--repeats`` times, every contender once per repeat with the order rotated:

  - engine:          ServeEngine, requests of all tasks batched together (--max-batch, --max-wait-ms), prompt cache on
  - engine-no-cache: the same without the per-task prompt cache
  - engine-no-length-cut: the engine running each batch as one forward, however mixed its lengths
  - one-at-a-time:   ServeEngine with max_batch 1 and no cache (each request is its own forward pass)
  - peft-switching:  PEFT's way: one PeftModel holding a prompt-tuning adapter per task; each request takes a lock,
                     calls set_adapter(task) and runs alone (PEFT's prompt methods cannot mix adapters in a batch)
  - floor:           no server: each task's own model scores its share of the stream in length-sorted batches of
                     --max-batch, in this process: the limit a server can approach

Every ratio is taken per repeat (the two runs minutes apart at most) and reported as median and spread. With
--generate the four tasks are generation tasks (headline, English->German, English->Chinese, a one-line summary),
every request asks for --max-new-tokens greedy tokens on POST /v1/tasks/{task}/generate; the texts are compared
with one-at-a-time's.

The PEFT adapters hold the very same soft rows as the artifacts (prefix placement, 8 tokens), so the answers are
compared too. SmolLM2 runs must hold the heavy-run lock:

    flock /tmp/prompttune-heavy.lock .venv/bin/python benchmarks/serve_load.py --requests 192 --repeats 5 \\
        --json benchmarks/results/serve_load.json --md benchmarks/results/serve_load.md
    .venv/bin/python benchmarks/serve_load.py --tiny --requests 64 --repeats 2     # a random 2-layer model, seconds
    flock /tmp/prompttune-heavy.lock .venv/bin/python benchmarks/serve_load.py --generate --requests 48 --repeats 3 \\
        --json benchmarks/results/serve_load_generate.json --md benchmarks/results/serve_load_generate.md
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# The engine hands each batch from the HTTP threads to its worker thread; OpenMP workers that spin after every
# parallel region hold the (2) cores and delay that hand-off by ~20 ms. Must be set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from pydantic import BaseModel  # noqa: E402


class OneInput(BaseModel):  # the PEFT server's request body (module level: FastAPI resolves the annotation by name)
    input: str

TASKS = {  # name -> (template, verbalizer, corpus, field of the corpus row)
    "sentiment": ("Review: {text}\nSentiment: {mask}", {"negative": "negative", "positive": "positive"}, "movie-reviews", "text"),
    "topic": ("Headline: {text}\nTopic: {mask}", {"business": "business", "entertainment": "entertainment", "politics": "politics",
                                                    "sport": "sport", "tech": "tech"}, "bbc-news", "headline"),
    "yesno": ("Text: {text}\nQuestion: is the writer pleased? Answer: {mask}", {"no": "No", "yes": "Yes"}, "movie-reviews", "text"),
    "quality": ("Snippet: {text}\nThe writing is {mask}", {"bad": "bad", "good": "good"}, "movie-reviews", "text"),
}
GEN_TASKS = {  # name -> (template, target, corpus, source field)
    "headline": ("Article: {text}\nHeadline:", "headline", "bbc-headlines", "article"),
    "en-de": ("English: {text}\nGerman:", "de", "django-en-de", "en"),
    "en-zh": ("English: {text}\nChinese:", "zh", "django-en-zh", "en"),
    "summary": ("Text: {text}\nIn one line:", "summary", "bbc-news", "text"),
}
NUM_TOKENS = 8


def _backbone(args):
    from prompttune.backbone import Backbone

    if not args.tiny:
        return Backbone.load(args.model)
    import transformers

    from prompttune.backbone import dequantised_copy, resolve

    path, gguf, _ = resolve("smollm2-135m")
    tok = transformers.AutoTokenizer.from_pretrained(str(dequantised_copy(path, gguf, torch.float32)))
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                   pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    return Backbone(transformers.LlamaForCausalLM(cfg).eval(), tok, family="causal-lm", name="tiny-llama-smollm2-vocab")


def _texts(n: int, seed: int, tasks: dict = TASKS) -> list[tuple[str, str]]:
    """(task, text) pairs, tasks interleaved, texts from the built-in corpora (cut to 300 characters)."""
    from prompttune.data import load_builtin

    rng = random.Random(seed)
    pools = {}
    for name, (_, _, corpus, fld) in tasks.items():
        rows = load_builtin(corpus, "test")
        pools[name] = [r[fld][:300] for r in rows]
    names = list(tasks)
    return [(names[i % len(names)], rng.choice(pools[names[i % len(names)]])) for i in range(n)]


def _artifacts(bb, out: Path) -> dict[str, Path]:
    from prompttune.model import PromptModel

    dirs = {}
    for seed, (name, (tpl, verb, _, _)) in enumerate(TASKS.items()):
        pm = PromptModel(bb, tpl, verb, "soft-prompt", method_options={"placement": "prefix", "num_tokens": NUM_TOKENS}, seed=seed)
        with torch.no_grad():  # distinct tables per task, as trained prompts would be (quality is not measured here)
            w = pm.method.soft.weight
            w.add_(0.1 * w.std() * torch.randn(w.shape, generator=torch.Generator().manual_seed(seed)))
        dirs[name] = pm.save_pretrained(out / name)
    return dirs


def _generation_artifacts(bb, out: Path) -> dict[str, Path]:
    from prompttune.generation import GenerationModel

    dirs = {}
    for seed, (name, (tpl, target, _, _)) in enumerate(GEN_TASKS.items()):
        gm = GenerationModel(bb, tpl, target, "soft-prompt", method_options={"placement": "prefix", "num_tokens": NUM_TOKENS}, seed=seed)
        with torch.no_grad():
            w = gm.method.soft.weight
            w.add_(0.1 * w.std() * torch.randn(w.shape, generator=torch.Generator().manual_seed(seed)))
        dirs[name] = gm.save_pretrained(out / name)
    return dirs


def _peft_adapters(bb_peft, arts: dict[str, Path], *, generation: bool):
    """One PeftModel holding a prompt-tuning adapter per artifact (the very same soft rows), and per task the
    artifact's meta and a renderer of its template without the soft tokens (PEFT puts its virtual tokens in front)."""
    from peft import PromptTuningConfig, get_peft_model
    from safetensors.torch import load_file

    from prompttune.artifact import read_meta
    from prompttune.template import Renderer, Template

    model = None
    tasks = {}
    for name, d in arts.items():
        meta = read_meta(d)
        cfg = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=NUM_TOKENS)
        if model is None:
            model = get_peft_model(bb_peft.model, cfg, adapter_name=name)
        else:
            model.add_adapter(name, cfg)
        with torch.no_grad():
            model.prompt_encoder[name].embedding.weight.copy_(load_file(str(d / "prompt.safetensors"))["soft.weight"])
        head = "{soft*%d}" % NUM_TOKENS
        assert meta["template"].startswith(head), meta["template"]
        extra = dict(drop_mask=True, move_space_into_mask=False) if generation else {}
        tasks[name] = (meta, Renderer(Template(meta["template"][len(head):]), bb_peft.tokenizer, max_length=256,
                                      placeholder_id=bb_peft.family.pad_id, **extra))
    model.eval()
    return model, tasks


def _peft_generate_app(bb_peft, arts: dict[str, Path], max_new_tokens: int):
    """PEFT's way for generation: one adapter active at a time, switched per request, PeftModel.generate."""
    from fastapi import FastAPI

    model, tasks = _peft_adapters(bb_peft, arts, generation=True)
    renderers = {name: r for name, (_, r) in tasks.items()}
    tok = bb_peft.tokenizer
    lock = threading.Lock()
    api = FastAPI()

    @api.post("/v1/tasks/{task}/generate")
    def generate(task: str, body: OneInput) -> dict:
        ids = torch.tensor([renderers[task].render({"text": body.input}).ids])
        with lock, torch.inference_mode():
            model.set_adapter(task)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=bb_peft.family.pad_id, eos_token_id=tok.eos_token_id)
        new = out[0, ids.shape[1]:].tolist()
        if tok.eos_token_id in new:
            new = new[: new.index(tok.eos_token_id)]
        return {"task": task, "outputs": [{"text": tok.decode(new, skip_special_tokens=True).strip()}]}

    return api


def _peft_app(bb_peft, arts: dict[str, Path]):
    """A server doing what PEFT allows: one adapter active at a time, switched per request."""
    from fastapi import FastAPI

    model, adapters = _peft_adapters(bb_peft, arts, generation=False)
    tasks = {}
    for name, (meta, renderer) in adapters.items():
        words = [bb_peft.tokenizer(" " + w[0], add_special_tokens=False)["input_ids"][0] for w in meta["verbalizer"]["words"].values()]
        tasks[name] = (renderer, words, list(meta["verbalizer"]["words"]))
    lock = threading.Lock()
    api = FastAPI()

    @api.post("/v1/tasks/{task}/predict")
    def predict(task: str, body: OneInput) -> dict:
        renderer, words, labels = tasks[task]
        r = renderer.render({"text": body.input})
        ids = torch.tensor([r.ids[: r.mask]])
        with lock, torch.inference_mode():
            model.set_adapter(task)
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1, words]
        p = logits.float().log_softmax(-1).exp()
        return {"task": task, "predictions": [{"label": labels[int(p.argmax())], "probabilities": dict(zip(labels, p.tolist()))}]}

    return api


def _run_server(app):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    deadline = time.time() + 60
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    return server, th, server.servers[0].sockets[0].getsockname()[1]


def _client(port: int, stream, concurrency: int, time_limit: float, generate: int = 0) -> dict:
    """Replay ``stream`` against the server from a separate process (load_client.py); its measurements."""
    with tempfile.TemporaryDirectory() as d:
        src, out = Path(d, "stream.json"), Path(d, "result.json")
        src.write_text(json.dumps(stream))
        subprocess.run([sys.executable, str(Path(__file__).with_name("load_client.py")), "--port", str(port), "--stream", str(src),
                        "--concurrency", str(concurrency), "--time-limit", str(time_limit), "--generate", str(generate),
                        "--out", str(out)], check=True)
        return json.loads(out.read_text())


def _floor(models: dict, stream, batch_size: int, generate: int) -> dict:
    """The limit a server approaches: the same inputs scored (or generated) by each task's own model in
    length-sorted batches of ``batch_size``, in this process, with no server, queue or HTTP."""
    answers: list = [None] * len(stream)
    t0 = time.perf_counter()
    for name, m in models.items():
        idx = [i for i, (t, _) in enumerate(stream) if t == name]
        if not idx:
            continue
        if generate:
            texts = m.generate([stream[i][1] for i in idx], max_new_tokens=generate, batch_size=batch_size)
            for i, text in zip(idx, texts):
                answers[i] = {"text": text}
        else:
            lp = m.predict_log_probs([{"text": stream[i][1]} for i in idx], batch_size=batch_size)
            for i, row in zip(idx, lp.exp().tolist()):
                answers[i] = {"label": m.labels[max(range(len(row)), key=row.__getitem__)], "probabilities": dict(zip(m.labels, row))}
    wall = time.perf_counter() - t0
    return {"completed": len(stream), "errors": 0, "seconds": wall, "requests_per_second": len(stream) / wall,
            "answers": answers}


def _spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": xs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tiny", action="store_true", help="a random 2-layer Llama with SmolLM2's vocabulary (smoke test)")
    ap.add_argument("--requests", type=int, default=192, help="requests per server and repeat")
    ap.add_argument("--repeats", type=int, default=5, help="runs of every contender, interleaved")
    ap.add_argument("--concurrency", type=int, default=16, help="client threads")
    ap.add_argument("--time-limit", type=float, default=180.0, help="seconds per server at most")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--generate", action="store_true", help="generation tasks on the generate route instead of classification")
    ap.add_argument("--max-new-tokens", type=int, default=16, help="--generate: greedy tokens per request")
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads:
        torch.set_num_threads(args.threads)
    import copy

    from prompttune import load
    from prompttune.serve import ServeEngine
    from prompttune.serve.app import create_app

    bb = _backbone(args)
    gen = args.max_new_tokens if args.generate else 0
    tasks = GEN_TASKS if gen else TASKS
    stream = _texts(args.requests, args.seed, tasks)
    warm = _texts(min(16, args.requests), args.seed + 1, tasks)
    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    arts = _generation_artifacts(bb, tmp) if gen else _artifacts(bb, tmp)
    modes = {
        "engine": dict(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, prefix_cache=True),
        "engine-no-cache": dict(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, prefix_cache=False),
        "engine-no-length-cut": dict(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, prefix_cache=True, forward_overhead_tokens=0),
        "one-at-a-time": dict(max_batch=1, max_wait_ms=0, prefix_cache=False),
    }
    if gen:  # generation batches are not cut by length
        del modes["engine-no-length-cut"]
    # Every server is started once and warmed up (not counted); then each repeat runs every contender once, the
    # order rotated per repeat, so slow drift of the machine falls on all of them alike.
    servers, engines = {}, {}
    for mode, kw in list(modes.items()) + [("peft-switching", None)]:
        if kw is None:
            peft_bb = copy.deepcopy(bb)
            app = _peft_generate_app(peft_bb, arts, gen) if gen else _peft_app(peft_bb, arts)
        else:
            engine = engines[mode] = ServeEngine(bb, max_queue=max(1024, args.requests), **kw)
            for name, d in arts.items():
                engine.add(d, name=name)
            app = create_app(engine, max_inputs=args.requests)
        servers[mode] = _run_server(app)
        _client(servers[mode][2], warm, min(4, args.concurrency), 120, gen)
    floor_models = {name: load(d, backbone=bb) for name, d in arts.items()}
    _floor(floor_models, warm, args.max_batch, gen)
    contenders = list(servers) + ["floor"]
    runs: dict[str, list[dict]] = {m: [] for m in contenders}
    for rep in range(args.repeats):
        order = contenders[rep % len(contenders):] + contenders[:rep % len(contenders)]
        for mode in order:
            if mode == "floor":
                res = _floor(floor_models, stream, args.max_batch, gen)
            else:
                if mode in engines:
                    engines[mode].stats.__init__()
                res = _client(servers[mode][2], stream, args.concurrency, args.time_limit, gen)
                if mode in engines:
                    st = engines[mode].stats.snapshot()
                    total = st["tokens_computed"] + st["prefix_tokens_reused"]
                    res.update(mean_batch=st["batch_inputs"] / max(st["batches"], 1), forward_passes=st["forwards"],
                               tokens_computed=st["tokens_computed"],
                               prefix_tokens_reused_share=st["prefix_tokens_reused"] / total if total else 0.0)
            runs[mode].append(res)
            print(f"repeat {rep + 1}/{args.repeats} {mode:>16}: {res['completed']} requests in {res['seconds']:.1f} s, "
                  f"{res['requests_per_second']:.2f} req/s" + (f", p50 {res['p50_ms']:.0f} ms" if "p50_ms" in res else "")
                  + (f", mean batch {res['mean_batch']:.1f}" if "mean_batch" in res else ""), flush=True)
    for mode, (server, th, _) in servers.items():
        server.should_exit = True
        th.join(30)
    for engine in engines.values():
        engine.close()

    ref = runs["one-at-a-time"][0]["answers"]
    results: dict[str, dict] = {}
    for mode, rs in runs.items():
        res = {"requests_per_second": _spread([r["requests_per_second"] for r in rs]), "completed": sum(r["completed"] for r in rs),
               "errors": sum(r["errors"] for r in rs)}
        for key in ("p50_ms", "p99_ms", "mean_batch", "prefix_tokens_reused_share"):
            if key in rs[0]:
                res[key] = _spread([r[key] for r in rs])
        pairs = [(a, b) for r in rs for a, b in zip(r["answers"], ref) if a is not None and b is not None]
        if gen:
            res["same_as_one_at_a_time"] = sum(a["text"] == b["text"] for a, b in pairs) / max(len(pairs), 1)
        else:
            res["same_as_one_at_a_time"] = sum(a["label"] == b["label"] for a, b in pairs) / max(len(pairs), 1)
            res["max_probability_difference"] = max((abs(a["probabilities"][k] - b["probabilities"][k]) for a, b in pairs
                                                     for k in a["probabilities"]), default=0.0)
        results[mode] = res

    def ratio(a: str, b: str, key: str = "requests_per_second", invert: bool = False) -> dict:
        """Per repeat (the two runs of a pair are minutes apart at most), then median and spread."""
        xs = [(y[key] / x[key]) if invert else (x[key] / y[key]) for x, y in zip(runs[a], runs[b])]
        return _spread(xs)

    ratios = {
        "throughput_engine_vs_one_at_a_time": ratio("engine", "one-at-a-time"),
        "throughput_engine_vs_peft_switching": ratio("engine", "peft-switching"),
        "throughput_engine_vs_engine_no_cache": ratio("engine", "engine-no-cache"),
        "throughput_engine_vs_floor": ratio("engine", "floor"),
        "throughput_engine_no_cache_vs_floor": ratio("engine-no-cache", "floor"),  # the same computation as the floor
        "p50_one_at_a_time_over_engine": ratio("engine", "one-at-a-time", "p50_ms", invert=True),
        "p50_peft_switching_over_engine": ratio("engine", "peft-switching", "p50_ms", invert=True),
    }
    if "engine-no-length-cut" in runs:
        ratios["throughput_engine_vs_engine_no_length_cut"] = ratio("engine", "engine-no-length-cut")
    record = {"model": bb.name, "tasks": list(tasks), "operation": "generate" if gen else "predict", "max_new_tokens": gen or None,
              "soft_tokens": NUM_TOKENS, "requests": args.requests, "repeats": args.repeats, "concurrency": args.concurrency,
              "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "torch_threads": torch.get_num_threads(),
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "results": results, "ratios": ratios}
    print(json.dumps({k: round(v["median"], 3) for k, v in ratios.items()}, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    if args.md:
        Path(args.md).write_text(_markdown(record))


def _markdown(record: dict) -> str:
    gen = record["max_new_tokens"]
    what = f"generation ({gen} greedy tokens per request)" if gen else "classification"
    med = lambda d: f"{d['median']:.2f} ({d['min']:.2f}-{d['max']:.2f})"  # noqa: E731
    lines = [f"# Serving load test: {record['model']}, 4 {what} tasks, {record['requests']} requests x {record['repeats']} repeats, "
             f"{record['concurrency']} clients", "",
             f"Server on 127.0.0.1, one input per request, tasks interleaved, the load generator in its own process; max batch "
             f"{record['max_batch']}, max wait {record['max_wait_ms']} ms; {record['torch_threads']} torch threads. Every contender once "
             "per repeat, the order rotated; median (min-max) over the repeats; the floor scores the same inputs with each task's "
             f"own model in length-sorted batches of {record['max_batch']}, no server. `benchmarks/serve_load.py{' --generate' if gen else ''}`.", "",
             f"| contender | req/s | p50 ms | mean batch | prompt tokens reused | same {'text' if gen else 'label'} as one-at-a-time |",
             "|---|---|---|---|---|---|"]
    for mode, r in record["results"].items():
        p50 = f"{r['p50_ms']['median']:.0f}" if "p50_ms" in r else "-"
        batch = f"{r['mean_batch']['median']:.1f}" if "mean_batch" in r else ("1" if mode in ("one-at-a-time", "peft-switching") else "-")
        reuse = f"{100 * r['prefix_tokens_reused_share']['median']:.0f}%" if "prefix_tokens_reused_share" in r else "-"
        lines.append(f"| {mode} | {med(r['requests_per_second'])} | {p50} | {batch} | {reuse} | {100 * r['same_as_one_at_a_time']:.1f}% |")
    lines += ["", "| ratio (per repeat) | median (min-max) | runs |", "|---|---|---|"]
    lines += [f"| {k} | {med(v)} | {', '.join(f'{x:.2f}' for x in v['runs'])} |" for k, v in record["ratios"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
