"""Few-shot accuracy of prompttune's defaults vs the hand-written prompt (and PEFT prompt tuning), over several seeds.

The `prompttune demo` setting: SmolLM2-135M, movie reviews, 16 training (+16 dev) reviews per class drawn with
each seed, the first N reviews of the fixed test split. Writes JSON + a Markdown table.

    .venv/bin/python benchmarks/fewshot_accuracy.py --seeds 0 1 2 --test-size 500 --out benchmarks/results/fewshot
    .venv/bin/python benchmarks/fewshot_accuracy.py --seeds 0 --peft --out benchmarks/results/fewshot-vs-peft

--peft also trains PEFT's PromptTuningConfig on the same training reviews of each seed: the `peft-prompt-tuning`
anchor of `prompttune experiment` (prompttune.experiment.anchors: 20 virtual tokens initialised from a task
instruction, PromptTuningInit.TEXT, AdamW lr 3e-2, batch 8, linear decay without warm-up, the causal-LM loss on the
label word after the rendered template, the final state kept: PEFT's recipe uses no dev set). Its steps default to
prompttune's own default budget for the same data (about 30 epochs), so the two get the same number of updates. It is
scored on the same test reviews by the same label-word scorer as every prompttune run.
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
    ap.add_argument("--model", default=None, help="model to use instead of smollm2-135m (a name or local directory)")
    ap.add_argument("--peft", action="store_true", help="also train PEFT PromptTuningConfig on the same splits")
    ap.add_argument("--peft-tokens", type=int, default=20)
    ap.add_argument("--peft-lr", type=float, default=3e-2)
    ap.add_argument("--peft-batch", type=int, default=8)
    ap.add_argument("--peft-steps", type=int, default=None, help="default: prompttune's default budget for the same data")
    ap.add_argument("--peft-init-text", default="Classify if the movie review is positive or negative:")
    ap.add_argument("--out", default="benchmarks/results/fewshot")
    args = ap.parse_args()

    from prompttune.config import with_overrides
    from prompttune.model import PromptModel
    from prompttune.pipeline import build_model, demo_config, load_splits

    runs, peft_runs, backbone, zero = [], [], None, None
    for seed in args.seeds:
        cfg = demo_config(Path(args.out) / f"seed{seed}", test_size=args.test_size, seed=seed)
        cfg = with_overrides(cfg, [f"method.name={args.method}", *([f"model.name={args.model}"] if args.model else []), *args.overrides])
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
        if args.peft:
            from prompttune.experiment.anchors import ANCHORS, train_anchor

            options = {**ANCHORS["peft-prompt-tuning"].defaults, "num_virtual_tokens": args.peft_tokens, "lr": args.peft_lr,
                       "batch_size": args.peft_batch, "steps": args.peft_steps, "init_text": args.peft_init_text}
            anchor, rec = train_anchor("peft-prompt-tuning", options, cfg, train, log=lambda m: None)
            peft_runs.append({"seed": seed, "accuracy": anchor.evaluate(test)["accuracy"], "steps": rec["steps"],
                              "train_seconds": rec["seconds"], "trainable_parameters": rec["trainable_parameters"]})
            del anchor
            print(json.dumps({"peft": peft_runs[-1]}), flush=True)
    accs = [r["accuracy"] for r in runs]
    summary = {"zero_shot_accuracy": zero, "method": args.method, "overrides": args.overrides, "test_size": args.test_size,
               "mean": statistics.mean(accs), "std": statistics.pstdev(accs), "runs": runs}
    table = ["| method | seeds | accuracy (mean ± std) | per seed |", "|---|---|---|---|",
             f"| zero-shot | – | {zero:.3f} | – |",
             f"| {args.method} {' '.join(args.overrides)} | {len(accs)} | {summary['mean']:.3f} ± {summary['std']:.3f} | "
             + ", ".join(f"{a:.3f}" for a in accs) + " |"]
    if peft_runs:
        pa = [r["accuracy"] for r in peft_runs]
        summary["peft"] = {"config": {"num_virtual_tokens": args.peft_tokens, "prompt_tuning_init": "TEXT", "init_text": args.peft_init_text,
                                      "lr": args.peft_lr, "batch_size": args.peft_batch},
                           "mean": statistics.mean(pa), "std": statistics.pstdev(pa), "runs": peft_runs}
        table.append(f"| PEFT prompt tuning ({args.peft_tokens} tokens, TEXT init, lr {args.peft_lr:g}, batch {args.peft_batch}) | "
                     f"{len(pa)} | {summary['peft']['mean']:.3f} ± {summary['peft']['std']:.3f} | " + ", ".join(f"{a:.3f}" for a in pa) + " |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
