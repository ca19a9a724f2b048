"""Methods side by side on one model: zero-shot, soft prompt, prefix, LoRA, full fine-tuning (few-shot sentiment).

Besides the registered methods, two zero-shot contenders: ``calibrated-zero-shot`` (contextual calibration: the
scores of content-free inputs divided out) and ``searched-words`` (``prompttune search --what verbalizer``: label
words proposed from the model's own predictions on the seed's training reviews, ranked on its dev reviews).

The `prompttune demo` setting unless told otherwise: movie reviews, 16 training + 16 dev reviews per class drawn with
each seed, the first N reviews of the fixed test split, every method with its defaults. One backbone is loaded per
method and seed (methods that change the weights must not see each other's changes). Writes results.json and a
Markdown table (mean ± std over the seeds) into --out, updating them after every run, and skips runs already there.

    .venv/bin/python benchmarks/methods.py --model smollm2-135m --methods zero-shot soft-prompt prefix lora prompt-finetune \\
        --seeds 0 1 2 --out benchmarks/results/methods-smollm2
    .venv/bin/python benchmarks/methods.py --model minilm-l6 --methods soft-prompt prefix lora head-finetune \\
        --template "{text}" --seeds 0 1 2 --out benchmarks/results/methods-minilm
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


CONTENDERS = {"calibrated-zero-shot": "zero-shot", "searched-words": "zero-shot"}  # contender -> the method it runs


def _write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def table(runs: list[dict], methods: list[str]) -> str:
    """Mean ± std per method: ``methods`` first, then any other method already in ``runs`` (an earlier invocation)."""
    methods = list(dict.fromkeys([*methods, *(r["method"] for r in runs)]))
    lines = ["| method | seeds | accuracy (mean ± std) | per seed | trainable parameters | artifact bytes | train s (mean) |",
             "|---|---|---|---|---|---|---|"]
    for m in methods:
        rs = sorted((r for r in runs if r["method"] == m), key=lambda r: r["seed"])
        if not rs:
            continue
        accs = [r["accuracy"] for r in rs]
        sd = statistics.pstdev(accs) if len(accs) > 1 else 0.0
        lines.append(f"| {m} | {len(rs)} | {statistics.mean(accs):.3f} ± {sd:.3f} | {', '.join(f'{a:.3f}' for a in accs)} | "
                     f"{rs[0]['trainable_parameters']:,} | {rs[0]['artifact_bytes']:,} | {statistics.mean(r['train_seconds'] for r in rs):.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", nargs="+", default=["zero-shot", "soft-prompt", "prefix", "lora", "prompt-finetune"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--test-size", type=int, default=500)
    ap.add_argument("--template", default=None, help="template (default: the demo's)")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], help="config overrides for every run, e.g. train.batch_size=8")
    ap.add_argument("--out", default="benchmarks/results/methods")
    ap.add_argument("--artifacts", default=str(Path(tempfile.gettempdir()) / "prompttune-bench"),
                    help="where the artifacts go (fine-tuning ones carry the whole model)")
    args = ap.parse_args()

    from prompttune.artifact import artifact_bytes
    from prompttune.config import with_overrides
    from prompttune.model import PromptModel
    from prompttune.pipeline import build_model, demo_config, load_splits
    from prompttune.search import search_label_words

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    runs = json.loads(res_path.read_text())["runs"] if res_path.exists() else []
    done = {(r["method"], r["seed"]) for r in runs}
    header = f"{args.model}, {demo_config(Path(args.artifacts)).data.shots_per_class} per class, {args.test_size} test reviews\n\n"
    seedless = ("zero-shot", "calibrated-zero-shot")  # the same whatever the seed: run once
    for seed in args.seeds:
        for method in args.methods:
            if (method, seed) in done or (method in seedless and any(r["method"] == method for r in runs)):
                continue
            cfg = demo_config(Path(args.artifacts) / out.name / f"{method}-seed{seed}", test_size=args.test_size, seed=seed)
            ov = [f"model.name={args.model}", f"method.name={CONTENDERS.get(method, method)}", *args.overrides]
            cfg = with_overrides(cfg, ov)
            if args.template:  # set directly: an override's value is read as YAML, and "a: {b}" is a mapping there
                cfg = cfg.model_copy(update={"prompt": cfg.prompt.model_copy(update={"template": args.template})})
            train, dev, test = load_splits(cfg)
            pm = build_model(cfg)
            t = time.perf_counter()
            steps = 0
            note = {}
            if method == "calibrated-zero-shot":
                note["calibration"] = pm.calibrate()
            elif method == "searched-words":
                best = search_label_words(pm, train, dev, per_class=5, max_candidates=20).best
                pm = PromptModel(pm.backbone, best.template, best.verbalizer, "zero-shot")
                note["verbalizer"] = best.verbalizer
            if pm.method.trainable:
                steps = pm.fit(train, dev, **cfg.train.model_copy(update={"progress": False}).model_dump()).steps
            train_s = time.perf_counter() - t
            m = pm.evaluate(test)
            pm.save_pretrained(cfg.output)
            runs.append({"method": method, "seed": seed, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "steps": steps,
                         "train_seconds": train_s, "trainable_parameters": pm.num_trainable_parameters(),
                         "artifact_bytes": artifact_bytes(cfg.output), "examples_per_second": m["examples_per_second"], **note})
            print(json.dumps(runs[-1], ensure_ascii=False), flush=True)
            meta = {"model": args.model, "test_size": args.test_size, "template": cfg.prompt.template, "overrides": args.overrides, "runs": runs}
            _write(res_path, json.dumps(meta, indent=2, ensure_ascii=False))
            _write(out / "summary.md", header + table(runs, args.methods))
    _write(out / "summary.md", header + table(runs, args.methods))
    print(table(runs, args.methods))


if __name__ == "__main__":
    main()
