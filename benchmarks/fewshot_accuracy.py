"""Few-shot accuracy of prompttune's defaults vs the hand-written prompt, over several seeds.

The `prompttune demo` setting: SmolLM2-135M, movie reviews, 16 training (+16 dev) reviews per class drawn with
each seed, the first N reviews of the fixed test split. Writes JSON + a Markdown table.

    .venv/bin/python benchmarks/fewshot_accuracy.py --seeds 0 1 2 --test-size 500 --out benchmarks/results/fewshot
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--test-size", type=int, default=500)
    ap.add_argument("--method", default="soft-prompt")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], help="config overrides, e.g. train.lr=0.01")
    ap.add_argument("--out", default="benchmarks/results/fewshot")
    args = ap.parse_args()

    from prompttune.config import with_overrides
    from prompttune.model import PromptModel
    from prompttune.pipeline import build_model, demo_config, load_splits

    runs, backbone, zero = [], None, None
    for seed in args.seeds:
        cfg = demo_config(Path(args.out) / f"seed{seed}", test_size=args.test_size, seed=seed)
        cfg = with_overrides(cfg, [f"method.name={args.method}", *args.overrides])
        train, dev, test = load_splits(cfg)
        pm = build_model(cfg, backbone)
        backbone = pm.backbone
        if zero is None:  # the hand-written prompt does not depend on the seed
            zs = PromptModel(backbone, cfg.prompt.template, cfg.prompt.verbalizer, "zero-shot")
            zero = zs.evaluate(test)["accuracy"]
            pm.method.set_trainable(backbone)
        t = time.perf_counter()
        res = pm.fit(train, dev, **cfg.train.model_copy(update={"progress": False}).model_dump())
        m = pm.evaluate(test)
        runs.append({"seed": seed, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "steps": res.steps,
                     "best_step": res.best_step, "train_seconds": time.perf_counter() - t})
        print(json.dumps(runs[-1]), flush=True)
    accs = [r["accuracy"] for r in runs]
    summary = {"zero_shot_accuracy": zero, "method": args.method, "overrides": args.overrides, "test_size": args.test_size,
               "mean": statistics.mean(accs), "std": statistics.pstdev(accs), "runs": runs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    table = ["| method | seeds | accuracy (mean ± std) | per seed |", "|---|---|---|---|",
             f"| zero-shot | – | {zero:.3f} | – |",
             f"| {args.method} {' '.join(args.overrides)} | {len(accs)} | {summary['mean']:.3f} ± {summary['std']:.3f} | "
             + ", ".join(f"{a:.3f}" for a in accs) + " |"]
    (out / "summary.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
