"""Prompt tuning a real Whisper on synthetic speech: zero-shot vs soft prompt vs prefix (vs LoRA), over seeds.

Four tasks, all from the spoken corpora (``prompttune speak``: espeak-ng reading the built-in corpora; synthetic
speech, real model):

- recognition: ``spoken-django`` (Django's UI strings: placeholders such as ``%(name)s``, "Enter a valid value.",
  a vocabulary Whisper gets wrong zero-shot), template ``{soft*N}{audio}`` (the soft prompt in Whisper's own
  previous-text position), scored by WER and CER (jiwer, case and punctuation folded);
- classification: ``spoken-movie-reviews`` (sentiment), template ``{audio}{soft*N} This review is{mask}.``, label
  words bad/good, accuracy;
- zh-recognition (multilingual models only): ``spoken-chinese-reviews`` (Chinese reviews of at most 30 characters
  read by espeak-ng's Mandarin voice), template ``{soft*N}{audio:zh}``, scored by CER (the measure for Chinese);
- zh-classification (multilingual models only): the same clips' sentiment, template ``{audio:zh}{soft*N}总之，{mask}。``,
  label words 不好/很好 (the best zero-shot of four wordings on 100 *train* clips: 0.61, others 0.30-0.40), accuracy
  and macro-F1 (the test split is 55 % negative).

Methods: ``zero-shot``, ``soft-prompt``, ``prefix``, ``lora`` (PEFT's Whisper recipe: q_proj and v_proj of every
attention, the encoder's included, so the encoder runs and trains every step) and ``lora-decoder`` (the same in the
decoder's attention only, ``target_modules: '.*decoder.*\\.(q_proj|v_proj)'``: the encoder stays frozen and each clip is
encoded once). Each LoRA run loads its own copy of the model.

Per method and seed: the metric on the first ``--test`` clips of the fixed test split, training seconds, clips/s
of evaluation and the artifact's size on disk (``save_pretrained``). Train rows are drawn per seed from the train
split (``--train`` clips for recognition, ``--shots`` per class for classification).

    .venv/bin/python benchmarks/speech_prompts.py --model whisper-tiny-en --seeds 0 1 2 \\
        --json benchmarks/results/speech-prompts-tiny-en.json
    .venv/bin/python benchmarks/speech_prompts.py --model whisper-base --tasks zh-recognition \\
        --methods zero-shot soft-prompt prefix --test 100 --json benchmarks/results/speech-prompts-base-zh.json
    .venv/bin/python benchmarks/speech_prompts.py --model whisper-base --tasks zh-classification \\
        --json benchmarks/results/speech-prompts-base-zh-classification.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path


LORA_DECODER = r".*decoder.*\.(q_proj|v_proj)"  # LoRA in the decoder's self- and cross-attention only
# label: (prompttune method, its options)
METHODS = {"zero-shot": ("zero-shot", {}), "soft-prompt": ("soft-prompt", {}), "prefix": ("prefix", {}), "lora": ("lora", {}),
           "lora-decoder": ("lora", {"target_modules": LORA_DECODER})}
RECOGNITION = {"recognition": ("spoken-django", "{audio}"), "zh-recognition": ("spoken-chinese-reviews", "{audio:zh}")}
SCORES = ("wer", "cer", "accuracy", "macro_f1")  # summarised as mean and std over seeds
# task: (corpus, audio field, text after the soft prompt, label words)
CLASSIFICATION = {
    "classification": ("spoken-movie-reviews", "{audio}", " This review is{mask}.", {"negative": "bad", "positive": "good"}),
    "zh-classification": ("spoken-chinese-reviews", "{audio:zh}", "总之，{mask}。", {"negative": "不好", "positive": "很好"}),
}


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def run_one(backbone, task: str, method: str, seed: int, args) -> dict:
    from prompttune import PromptModel
    from prompttune.data import few_shot, load_rows
    from prompttune.generation import GenerationModel

    soft = f"{{soft*{args.soft}}}" if method == "soft-prompt" else ""
    name, options = METHODS[method]
    if name == "lora":  # LoRA changes the model it is put in: a copy of its own
        from prompttune.backbone import Backbone

        backbone = Backbone.load(args.model)
    if task in RECOGNITION:
        corpus, audio = RECOGNITION[task]
        rows = load_rows(corpus, split="train", require_label=False)
        train = random.Random(seed).sample(rows, args.train)
        test = load_rows(corpus, split="test", require_label=False)[: args.test]
        model = GenerationModel(backbone, soft + audio, target="text", method=name, method_options=options, seed=seed)
    else:
        corpus, audio, text, words = CLASSIFICATION[task]
        train = few_shot(load_rows(corpus, split="train"), args.shots, seed)
        test = load_rows(corpus, split="test")[: args.test]
        model = PromptModel(backbone, audio + soft + text, words, method=name, method_options=options, seed=seed)
    seconds = 0.0
    if method != "zero-shot":
        start = time.perf_counter()
        model.fit(train, None, max_steps=args.steps, batch_size=8, seed=seed, progress=False)
        seconds = time.perf_counter() - start
    m = model.evaluate(test, max_new_tokens=48) if task in RECOGNITION else model.evaluate(test)
    with tempfile.TemporaryDirectory() as d:
        size = dir_size(model.save_pretrained(Path(d) / "artifact"))
    out = {"task": task, "method": method, "seed": seed, "train_seconds": round(seconds, 1),
           "clips_per_second": m["examples_per_second"], "artifact_bytes": size, "trainable_parameters": model.num_trainable_parameters()}
    if task in RECOGNITION:
        out.update(wer=m["wer"], cer=m["cer"], examples=[[r["text"], o] for r, o in zip(test[:5], m["outputs"][:5])])
    else:
        out.update(accuracy=m["accuracy"], macro_f1=m["macro_f1"])
    print(json.dumps({k: v for k, v in out.items() if k != "examples"}), flush=True)
    return out


def summary(results: list[dict]) -> list[dict]:
    rows = []
    for task in dict.fromkeys(r["task"] for r in results):
        for method in dict.fromkeys(r["method"] for r in results if r["task"] == task):
            rs = [r for r in results if r["task"] == task and r["method"] == method]
            row = {"task": task, "method": method, "seeds": len(rs)}
            for k in (*SCORES, "clips_per_second", "train_seconds", "artifact_bytes"):
                vals = [r[k] for r in rs if r.get(k) is not None]
                if vals:
                    row[k] = statistics.mean(vals)
                    if k in SCORES:
                        row[k + "_std"] = statistics.pstdev(vals)
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="whisper-tiny-en")
    ap.add_argument("--tasks", nargs="+", default=["recognition", "classification"], choices=[*RECOGNITION, *CLASSIFICATION])
    ap.add_argument("--methods", nargs="+", default=["zero-shot", "soft-prompt", "prefix"], choices=list(METHODS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--soft", type=int, default=16, help="soft tokens of the soft prompt")
    ap.add_argument("--train", type=int, default=64, help="recognition: training clips per seed")
    ap.add_argument("--shots", type=int, default=16, help="classification: clips per class per seed")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--test", type=int, default=200, help="test clips (the first of the fixed test split)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from prompttune.backbone import Backbone

    backbone = Backbone.load(args.model)
    results = []
    for task in args.tasks:
        for method in args.methods:
            for seed in ([0] if method == "zero-shot" else args.seeds):
                results.append(run_one(backbone, task, method, seed, args))
    table = summary(results)
    for row in table:
        print(json.dumps(row))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "summary": table, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
