"""Where the serving engine's two CPU cost rules come from, measured side by side on one model:

1. The prompt cache's break-even. For shared prompts of P tokens (P soft tokens in front of the text), the same
   batch of --rows inputs is scored by an engine with the prompt cache (every P cached) and one without,
   alternately, --reps times; the ratio no-cache time / cache time per pair, median and spread. Below the break-even
   the cache's own work (copying its keys/values into the batch, a longer attention mask) costs more than the P
   tokens it saves: ``PROMPT_CACHE_MIN_TOKENS`` in serve/engine.py.
2. What one forward pass costs beyond its tokens. Forwards of (rows, tokens) in a grid are timed and fitted as
   a + b x rows x tokens; a / b, in tokens' worth, is what the engine weighs padding against when it cuts a batch
   of mixed lengths into forwards of similar lengths: ``FORWARD_OVERHEAD_TOKENS``.

    flock /tmp/prompttune-heavy.lock .venv/bin/python benchmarks/prompt_cache.py --json benchmarks/results/prompt-cache.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402


def _texts(n: int, tokens: int, tok) -> list[str]:
    """n texts of exactly ``tokens`` tokens: consecutive reviews of the built-in test split joined, then cut."""
    from prompttune.data import load_builtin

    out, ids = [], []
    for r in load_builtin("movie-reviews", "test"):
        ids += tok(" " + r["text"], add_special_tokens=False)["input_ids"]
        if len(ids) >= tokens:
            out.append(tok.decode(ids[:tokens]).strip())
            ids = []
        if len(out) == n:
            return out
    raise SystemExit("not enough reviews")


def break_even(bb, prompts, rows: int, tokens: int, reps: int) -> list[dict]:
    from prompttune.model import PromptModel
    from prompttune.serve import ServeEngine

    texts = _texts(rows, tokens, bb.tokenizer)
    out = []
    with tempfile.TemporaryDirectory() as d:
        for P in prompts:
            pm = PromptModel(bb, "{soft*%d}{text} Sentiment:{mask}" % P, {"negative": "negative", "positive": "positive"}, "soft-prompt")
            art = pm.save_pretrained(Path(d) / f"p{P}")
            engines = {}
            for name, kw in (("cache", dict(prefix_cache=True, prompt_cache_min_tokens=1)), ("no-cache", dict(prefix_cache=False))):
                e = engines[name] = ServeEngine(bb, start=False, **kw)
                e.add(art, name="t")
            items = [("t", t) for t in texts]
            for e in engines.values():
                e.log_probs_mixed(items)  # warm-up
            times = {"cache": [], "no-cache": []}
            for rep in range(reps):
                for name in (("cache", "no-cache") if rep % 2 == 0 else ("no-cache", "cache")):
                    s = time.perf_counter()
                    engines[name].log_probs_mixed(items)
                    times[name].append(time.perf_counter() - s)
            ratios = [b / a for a, b in zip(times["cache"], times["no-cache"])]
            cached = engines["cache"].tasks["t"].describe()["cached_prefix_tokens"]
            out.append({"soft_tokens": P, "cached_tokens": cached, "speedup_median": statistics.median(ratios),
                        "speedup_min": min(ratios), "speedup_max": max(ratios), "runs": ratios})
            print(f"P={P:>3} (cached {cached}): no-cache / cache = {statistics.median(ratios):.3f} "
                  f"({min(ratios):.3f}-{max(ratios):.3f})", flush=True)
    return out


def forward_cost(bb, reps: int) -> dict:
    """Median time of forwards of (rows, tokens) and the least-squares fit t = a + b x rows x tokens."""
    m = bb.model.base_model
    H = m.config.hidden_size
    grid = [(1, 8), (1, 32), (1, 64), (1, 128), (4, 32), (4, 64), (8, 16), (8, 64), (16, 64)]
    pts = []
    with torch.inference_mode():
        for R, T in grid:
            e, a = torch.randn(R, T, H), torch.ones(R, T, dtype=torch.long)
            m(inputs_embeds=e, attention_mask=a, use_cache=False)
            ts = []
            for _ in range(reps):
                s = time.perf_counter()
                m(inputs_embeds=e, attention_mask=a, use_cache=False)
                ts.append(time.perf_counter() - s)
            pts.append((R * T, statistics.median(ts)))
            print(f"forward {R:>2} x {T:>3}: {1000 * pts[-1][1]:.1f} ms", flush=True)
    n = len(pts)
    mx, my = sum(x for x, _ in pts) / n, sum(y for _, y in pts) / n
    b = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
    a = my - b * mx
    return {"points": [{"tokens": x, "seconds": y} for x, y in pts], "fixed_seconds": a, "seconds_per_token": b,
            "overhead_tokens": a / b}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32], help="shared prompt lengths (soft tokens)")
    ap.add_argument("--rows", type=int, default=8, help="inputs per batch")
    ap.add_argument("--tokens", type=int, default=64, help="tokens of text per input")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from prompttune.backbone import Backbone

    bb = Backbone.load(args.model)
    bb.freeze()
    bb.model.eval()
    record = {"model": bb.name, "rows": args.rows, "tokens": args.tokens, "reps": args.reps, "torch_threads": torch.get_num_threads(),
              "break_even": break_even(bb, args.prompts, args.rows, args.tokens, args.reps), "forward_cost": forward_cost(bb, args.reps)}
    print(f"forward overhead: {record['forward_cost']['overhead_tokens']:.0f} tokens' worth "
          f"({1000 * record['forward_cost']['fixed_seconds']:.0f} ms fixed, {1e3 * record['forward_cost']['seconds_per_token']:.2f} ms a token)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
