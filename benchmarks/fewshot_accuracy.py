"""Few-shot accuracy of prompttune's defaults vs the hand-written prompt (and PEFT prompt tuning), over several seeds.

The `prompttune demo` setting: SmolLM2-135M, movie reviews, 16 training (+16 dev) reviews per class drawn with
each seed, the first N reviews of the fixed test split. Writes JSON + a Markdown table.

    .venv/bin/python benchmarks/fewshot_accuracy.py --seeds 0 1 2 --test-size 500 --out benchmarks/results/fewshot
    .venv/bin/python benchmarks/fewshot_accuracy.py --seeds 0 --peft --out benchmarks/results/fewshot-vs-peft

--peft also trains PEFT's PromptTuningConfig on the same training reviews of each seed, configured as PEFT's prompt
tuning guide does: 20 virtual tokens initialised from a task instruction (PromptTuningInit.TEXT), AdamW lr 3e-2,
batch 8, linear decay without warm-up, the causal-LM loss on the label word after "Review: ...\\nSentiment:", the
final state kept (PEFT's recipe uses no dev set). Its steps default to prompttune's own default budget for the same
data (about 30 epochs), so the two get the same number of updates. It is scored on the same test reviews by the
log-probability of each label word after the prompt (the label set as a restricted decoding).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch


def peft_prompt_tuning(backbone, train, test, labels, words, seed: int, *, tokens: int, lr: float, batch: int, steps: int,
                       init_text: str, prompt: str = "Review: {text}\nSentiment:", eval_batch: int = 16) -> dict:
    """Train PEFT prompt tuning on ``train`` and return its test accuracy (and the time it took)."""
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model
    from transformers import get_linear_schedule_with_warmup

    tok = backbone.tokenizer
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tdir:
        tok.save_pretrained(tdir)  # PEFT's TEXT init reads the tokenizer from a path
        cfg = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=tokens, prompt_tuning_init=PromptTuningInit.TEXT,
                                 prompt_tuning_init_text=init_text, tokenizer_name_or_path=tdir)
        model = get_peft_model(backbone.model, cfg)
    label_ids = [tok(" " + w, add_special_tokens=False)["input_ids"] for w in words]  # the verbalizer's first word per label
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def encode(row, label_index=None):
        ids = tok(prompt.format(text=row["text"]), add_special_tokens=True, truncation=True, max_length=240)["input_ids"]
        target = label_ids[labels.index(row["label"]) if label_index is None else label_index]
        return ids + target, [-100] * len(ids) + target

    def collate(pairs):
        n = max(len(i) for i, _ in pairs)
        ids = torch.full((len(pairs), n), pad)
        lab = torch.full((len(pairs), n), -100)
        att = torch.zeros((len(pairs), n), dtype=torch.long)
        for r, (i, l) in enumerate(pairs):
            ids[r, :len(i)], lab[r, :len(l)], att[r, :len(i)] = torch.tensor(i), torch.tensor(l), 1
        return ids, att, lab

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    sched = get_linear_schedule_with_warmup(opt, 0, steps)
    rng = random.Random(seed)
    order: list[int] = []
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        if len(order) < batch:
            more = list(range(len(train)))
            rng.shuffle(more)
            order += more
        idx, order = order[:batch], order[batch:]
        ids, att, lab = collate([encode(train[i]) for i in idx])
        loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    train_seconds = time.perf_counter() - t0

    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test), eval_batch):
            rows = test[start:start + eval_batch]
            scores = torch.zeros(len(rows), len(labels))
            for c in range(len(labels)):
                ids, att, lab = collate([encode(r, c) for r in rows])
                logits = model(input_ids=ids, attention_mask=att).logits[:, tokens:]  # drop the virtual-token positions
                logp = logits[:, :-1].float().log_softmax(-1)
                tgt = lab[:, 1:]
                mask = tgt != -100
                scores[:, c] = (logp.gather(-1, tgt.clamp(min=0)[..., None])[..., 0] * mask).sum(-1)
            gold = torch.tensor([labels.index(r["label"]) for r in rows])
            correct += int((scores.argmax(-1) == gold).sum())
    trainable = sum(p.numel() for p in params)
    return {"seed": seed, "accuracy": correct / len(test), "steps": steps, "train_seconds": train_seconds,
            "trainable_parameters": trainable}


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
    from prompttune.train import steps_for

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
            labels = pm.labels
            words = [w if isinstance(w, str) else w[0] for w in (pm.verbalizer.words[l] for l in labels)]
            steps = args.peft_steps or steps_for(len(train), args.peft_batch)
            backbone.set_prefix(None)  # a prefix method leaves its keys/values in the attention layers it shares with PEFT
            peft_runs.append(peft_prompt_tuning(backbone, train, test, labels, words, seed, tokens=args.peft_tokens, lr=args.peft_lr,
                                                batch=args.peft_batch, steps=steps, init_text=args.peft_init_text))
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
