"""Generation on SmolLM2-135M: zero-shot prompt vs a tuned soft prompt, on BBC headline generation and on
Django's UI strings English -> German. Scores ROUGE-1/2/L, sacreBLEU BLEU and chrF on the first N examples of
each corpus's fixed test split, and writes JSON + a Markdown table.

    flock /tmp/prompttune-heavy.lock .venv/bin/python benchmarks/generation.py --out benchmarks/results/generation

Small by design (a few minutes on 2 CPU cores): a short training budget, short outputs, greedy decoding.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

TASKS = {
    "bbc-headlines": {
        "prompt": {"template": "Article: {article}\nHeadline:", "target": "headline", "max_length": 160, "max_target_length": 24},
        "data": {"train": "bbc-headlines", "test": "bbc-headlines"},
        "generation": {"max_new_tokens": 20, "stop": ["\n"]},
    },
    "django-en-de": {
        "prompt": {"template": "English: {en}\nGerman:", "target": "de", "max_length": 64, "max_target_length": 32},
        "data": {"train": "django-en-de", "test": "django-en-de"},
        "generation": {"max_new_tokens": 24, "stop": ["\n"]},
    },
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--test-size", type=int, default=60)
    ap.add_argument("--train-size", type=int, default=256)
    ap.add_argument("--dev-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], help="config overrides for every task, e.g. method.num_tokens=20")
    ap.add_argument("--out", default="benchmarks/results/generation")
    args = ap.parse_args()

    from prompttune.config import RunConfig, with_overrides
    from prompttune.pipeline import build_model, load_splits

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, backbone = [], None
    for name in args.tasks:
        spec = TASKS[name]
        cfg = RunConfig.model_validate({
            "model": {"name": args.model}, "prompt": spec["prompt"], "generation": {**spec["generation"], "batch_size": args.batch_size},
            "method": {"name": "soft-prompt", "placement": "template"},
            "data": {**spec["data"], "train_size": args.train_size, "dev_size": args.dev_size, "test_size": args.test_size, "seed": 0},
            "train": {"max_steps": args.steps, "batch_size": args.batch_size, "eval_every": max(1, args.steps // 4), "progress": False,
                      **({"lr": args.lr} if args.lr else {})},
            "output": str(out / name)})
        cfg = with_overrides(cfg, args.overrides)
        train, dev, test = load_splits(cfg)
        t = time.perf_counter()
        zero_model = build_model(cfg, backbone, method="zero-shot")
        backbone = zero_model.backbone
        zero = zero_model.evaluate(test)
        zero_s = time.perf_counter() - t
        print(f"{name} zero-shot: " + json.dumps({k: round(zero[k], 2) for k in ("rouge1", "rouge2", "rougeL", "bleu", "chrf")}), flush=True)
        gm = build_model(cfg, backbone)
        t = time.perf_counter()
        res = gm.fit(train, dev, **cfg.train.model_dump())
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        tuned = gm.evaluate(test)
        tuned_s = time.perf_counter() - t
        print(f"{name} tuned:     " + json.dumps({k: round(tuned[k], 2) for k in ("rouge1", "rouge2", "rougeL", "bleu", "chrf")}), flush=True)
        keep = ("rouge1", "rouge2", "rougeL", "bleu", "chrf", "exact_match", "loss", "tokens_per_second", "generated_tokens", "n")
        results.append({
            "task": name, "template": gm.template.text, "target": cfg.prompt.target, "train_examples": len(train),
            "dev_examples": len(dev), "test_examples": len(test), "steps": res.steps, "best_step": res.best_step,
            "train_seconds": train_s, "dev_history": res.history, "trainable_parameters": gm.num_trainable_parameters(),
            "zero_shot": {**{k: zero[k] for k in keep}, "seconds": zero_s},
            "tuned": {**{k: tuned[k] for k in keep}, "seconds": tuned_s},
            "samples": [{"source": test[i][gm.template.fields[0]][:200], "reference": test[i][cfg.prompt.target],
                         "zero_shot": zero["outputs"][i], "tuned": tuned["outputs"][i]} for i in range(min(5, len(test)))],
        })
        backbone = gm.backbone
    summary = {"model": args.model, "method": "soft-prompt (placement: template)", "overrides": args.overrides,
               "train_size": args.train_size, "steps": args.steps, "batch_size": args.batch_size, "decoding": "greedy",
               "results": results}
    (out / "results.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "results.md").write_text(markdown(summary), encoding="utf-8")
    print(markdown(summary))


def markdown(summary: dict) -> str:
    lines = [f"# Generation: zero-shot vs tuned soft prompt on {summary['model']}", "",
             f"{summary['method']}, {summary['steps']} steps of batch {summary['batch_size']} on {summary['train_size']} training "
             f"examples, greedy decoding; scores on the first N examples of each fixed test split.", "",
             "| task | N | prompt | ROUGE-1 | ROUGE-2 | ROUGE-L | BLEU | chrF | tokens/s |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in summary["results"]:
        for which in ("zero_shot", "tuned"):
            m = r[which]
            lines.append(f"| {r['task']} | {m['n']} | {which.replace('_', '-')} | {m['rouge1']:.2f} | {m['rouge2']:.2f} | "
                         f"{m['rougeL']:.2f} | {m['bleu']:.2f} | {m['chrf']:.2f} | {m['tokens_per_second']:.1f} |")
    lines.append("")
    for r in summary["results"]:
        lines += [f"## {r['task']}", "", f"Template `{r['template']!s}`, {r['trainable_parameters']} trainable parameters, "
                  f"{r['steps']} steps in {r['train_seconds']:.0f} s (kept step {r['best_step']}, lowest dev loss); dev loss "
                  + ", ".join(f"{h['step']}: {h['loss']:.3f}" for h in r["dev_history"]) + ".", "",
                  "| source | reference | zero-shot | tuned |", "|---|---|---|---|"]
        for s in r["samples"]:
            cells = [str(s[k]).replace("|", "\\|").replace("\n", " ")[:120] for k in ("source", "reference", "zero_shot", "tuned")]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
