"""Automatic prompts vs the hand-written one on SmolLM2-135M, movie reviews, 16 training + 16 dev reviews per class.

Contenders, each scored on the first N reviews of the fixed test split:
  hand prompt (zero-shot) | searched label words | searched template (built-in edits) | generated template |
  both | RL prompt (rl-prompt) |
  hand prompt + 1 similar demonstration per class | ensemble of hand + words + template | soft prompt (optional)
Search and RL use only the 32 training and 32 dev reviews. Writes JSON + Markdown after every contender.

    flock /tmp/prompttune-heavy.lock .venv/bin/python benchmarks/prompt_search.py --seeds 0 --test-size 500 \\
        --out benchmarks/results/prompt-search
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--test-size", type=int, default=500)
    ap.add_argument("--rl-steps", type=int, default=30)
    ap.add_argument("--rl-samples", type=int, default=4)
    ap.add_argument("--soft", action="store_true", help="also train the default soft prompt (about 2.5 minutes a seed)")
    ap.add_argument("--only", default="hand,words,template,generated,both,ensemble,demos,rl,soft",
                    help="comma-separated contenders to run (soft also needs --soft)")
    ap.add_argument("--rl-candidates", type=int, default=1000)
    ap.add_argument("--out", default="benchmarks/results/prompt-search")
    args = ap.parse_args()

    from prompttune.demonstrations import Demonstrations
    from prompttune.ensemble import Ensemble
    from prompttune.model import PromptModel
    from prompttune.pipeline import build_model, demo_config, load_splits
    from prompttune.search import search_label_words, search_templates

    only = set(args.only.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record: dict = {"model": "smollm2-135m", "corpus": "movie-reviews", "shots_per_class": 16, "test_size": args.test_size,
                    "rl_steps": args.rl_steps, "rl_samples": args.rl_samples, "runs": []}
    backbone = None
    for seed in args.seeds:
        cfg = demo_config(out / f"seed{seed}", test_size=args.test_size, seed=seed)
        train, dev, test = load_splits(cfg)
        hand_t, hand_w = cfg.prompt.template, cfg.prompt.verbalizer
        if backbone is None:
            backbone = build_model(cfg.model_copy(update={"method": type(cfg.method).model_validate({"name": "zero-shot"})})).backbone
        run: dict = {"seed": seed, "rows": []}
        record["runs"].append(run)

        def zs(template, words, demos=None):
            return PromptModel(backbone, template, words, "zero-shot", demonstrations=demos)

        def add(name, pm_or_ens, seconds, **extra):
            t = time.perf_counter()
            acc = pm_or_ens.evaluate(test)["accuracy"]
            row = {"contender": name, "test_accuracy": acc, "search_or_train_seconds": round(seconds, 1),
                   "test_seconds": round(time.perf_counter() - t, 1), **extra}
            run["rows"].append(row)
            print(json.dumps(row), flush=True)
            _write(out, record)

        hand = zs(hand_t, hand_w)
        best_w, best_t = hand_w, hand_t
        if "hand" in only:
            add("hand prompt (zero-shot)", hand, 0.0, template=hand_t, verbalizer=hand_w)

        if only & {"words", "both", "ensemble"}:
            t = time.perf_counter()
            words = search_label_words(hand, train, dev, per_class=5, max_candidates=20)
            best_w = words.best.verbalizer
            add("searched label words", zs(hand_t, best_w), time.perf_counter() - t, verbalizer=best_w,
                dev_accuracy=words.best.dev_accuracy, seed_dev_accuracy=words.seed.dev_accuracy,
                per_class=words.extra["per_class"], top5=[(c.describe(), round(c.dev_accuracy, 3)) for c in words.candidates[:5]])

        if only & {"template", "ensemble"}:
            t = time.perf_counter()
            temps = search_templates(hand, train, dev)
            best_t = temps.best.template
            add("searched template", zs(best_t, hand_w), time.perf_counter() - t, template=best_t,
                dev_accuracy=temps.best.dev_accuracy, seed_dev_accuracy=temps.seed.dev_accuracy,
                top5=[(c.template, round(c.dev_accuracy, 3)) for c in temps.candidates[:5]])

        if "generated" in only:
            t = time.perf_counter()
            gen = search_templates(hand, train, dev, generate=3, cues=(), frames=(), instructions=())
            add("generated template (model-written cue)", zs(gen.best.template, hand_w), time.perf_counter() - t,
                template=gen.best.template, dev_accuracy=gen.best.dev_accuracy,
                generated=[(c.template, round(c.dev_accuracy, 3)) for c in gen.candidates if c.kind == "generated"])

        if "both" in only:
            t = time.perf_counter()
            both = search_templates(zs(hand_t, best_w), train, dev)
            add("searched label words + template", zs(both.best.template, best_w), time.perf_counter() - t,
                template=both.best.template, verbalizer=best_w, dev_accuracy=both.best.dev_accuracy)

        if "ensemble" in only:
            add("ensemble: hand + words + template", Ensemble([hand, zs(hand_t, best_w), zs(best_t, hand_w)]), 0.0)

        if "demos" in only:
            demo = zs(hand_t, hand_w, Demonstrations(train, {"k": 1, "select": "similar"}))
            add("hand prompt + 1 similar demonstration per class", demo, 0.0)

        if "rl" in only:
            rl = PromptModel(backbone, hand_t, hand_w, "rl-prompt", seed=seed,
                             method_options={"num_tokens": 5, "samples": args.rl_samples, "candidates": args.rl_candidates})
            t = time.perf_counter()
            res = rl.fit(train, dev, max_steps=args.rl_steps, eval_every=10, lr=0.1, progress=False, seed=seed)
            rewards = [h["reward"] for h in res.history if "reward" in h]
            k = max(1, len(rewards) // 3)
            add(f"RL prompt (rl-prompt, 5 slots, {args.rl_steps} steps x {args.rl_samples} samples, {args.rl_candidates} words)", rl,
                time.perf_counter() - t, prompt=rl.method.options.prompt_text, steps=res.steps, best_step=res.best_step,
                best_dev=res.best_dev, reward_first_third=sum(rewards[:k]) / k, reward_last_third=sum(rewards[-k:]) / k,
                dev_history=[(h["step"], h["accuracy"], round(h["loss"], 3), h["prompt"]) for h in res.history if "accuracy" in h])

        if args.soft and "soft" in only:  # the soft-prompt method with its defaults (the config default is now prefix)
            soft = build_model(cfg.model_copy(update={"method": type(cfg.method).model_validate({"name": "soft-prompt"})}), backbone)
            t = time.perf_counter()
            soft.fit(train, dev, **cfg.train.model_copy(update={"progress": False}).model_dump())
            add("soft prompt (defaults)", soft, time.perf_counter() - t)
    _write(out, record)


def _write(out: Path, record: dict) -> None:
    (out / "results.json").write_text(json.dumps(record, indent=2, ensure_ascii=False))
    lines = [f"SmolLM2-135M, movie reviews, {record['shots_per_class']} train + {record['shots_per_class']} dev per class, "
             f"first {record['test_size']} test reviews.", "",
             "| contender | seeds | test accuracy (mean ± std) | per seed |", "|---|---|---|---|"]
    by: dict[str, list[float]] = {}
    for run in record["runs"]:
        for r in run["rows"]:
            by.setdefault(r["contender"], []).append(r["test_accuracy"])
    for name, accs in by.items():
        sd = statistics.pstdev(accs) if len(accs) > 1 else 0.0
        lines.append(f"| {name} | {len(accs)} | {statistics.mean(accs):.3f} ± {sd:.3f} | {', '.join(f'{a:.3f}' for a in accs)} |")
    lines += ["", "| seed | contender | test accuracy | search/train s | what was found |", "|---|---|---|---|---|"]
    for run in record["runs"]:
        for r in run["rows"]:
            found = r.get("prompt") or r.get("template") or ""
            if "verbalizer" in r and r["contender"] != "hand prompt (zero-shot)":
                found = (found + " " if found else "") + json.dumps(r["verbalizer"], ensure_ascii=False)
            found = found.replace("\n", "\\n").replace("|", "/")
            lines.append(f"| {run['seed']} | {r['contender']} | {r['test_accuracy']:.3f} | {r['search_or_train_seconds']} | {found} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
