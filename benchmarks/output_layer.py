"""What scoring and training cost above the bare transformer layers (the floor), and what computing the output layer
only where it is needed saves. Contenders are timed alternately (A B C ... A B C ...) in one process, medians of
``--repeats``, reported as ratios to the floor.

Scoring (no gradients; the same examples for every contender):
  floor          the bare transformer layers on each example's tokens once (``base_model``; no output layer at all)
  fast           single-token label words read at one position, their output rows only (prompttune's fast path)
  shared         multi-token words: the context once, each word continuing it from its keys/values, the first word
                 token through its output rows only, the vocabulary only at the later word tokens (prompttune now)
  per-word       multi-token words, one full row per (example, word) (prompttune before; a server still merges it)
  full-logits    the model's own forward on the per-word rows: the vocabulary at every position, then gathered
                 (what a scorer that calls ``model(...).logits`` pays; the masked-LM / seq2seq families before)
Training step (soft prompt, forward + backward + AdamW): floor (bare layers, gradient to the input embeddings),
  fast, shared, per-word on the same batch. Generation loss (teacher-forced, soft prompt): the target positions
  only (chunked where the vocabulary is large) vs the model's own forward with ``labels`` (every position).

    .venv/bin/python benchmarks/output_layer.py --model gemma3-270m --json benchmarks/results/output-layer-gemma.json
    .venv/bin/python benchmarks/output_layer.py --model smollm2-135m --json benchmarks/results/output-layer-smollm2.json
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from timing import alternate, medians

SETTINGS = {
    # the seed's Chinese instruction; 负面 is two Gemma tokens, 正面 one
    "chinese-reviews": dict(template="请判断以下文本是正面还是负面：{text}\n回答：{mask}", multi={"negative": "负面", "positive": "正面"},
                            single={"negative": "差", "positive": "好"}),
    "movie-reviews": dict(template="Review: {text}\nSentiment: {mask}", multi={"negative": "very negative", "positive": "very positive"},
                          single={"negative": "negative", "positive": "positive"}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default=None, help="chinese-reviews or movie-reviews (default: by the model's language)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--soft", type=int, default=8, help="soft tokens in front of the template")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import transformers

    from prompttune import data
    from prompttune.backbone import Backbone
    from prompttune.generation import GenerationModel
    from prompttune.model import PromptModel

    torch.manual_seed(0)
    bb = Backbone.load(args.model)
    bb.model.eval()
    name = args.data or ("chinese-reviews" if "gemma" in args.model else "movie-reviews")
    s = SETTINGS[name]
    rows = data.few_shot(data.load_builtin(name, "train"), args.batch, 0)[: args.batch]
    template = "{soft*%d} " % args.soft + s["template"]
    multi = PromptModel(bb, template, s["multi"], "soft-prompt")
    single = PromptModel(bb, template, s["single"], "soft-prompt")
    assert single.fast and not multi.fast, (single.word_ids, multi.word_ids)
    fam = bb.family
    y = multi.labels_tensor(rows)
    rendered = [multi.render(r) for r in rows]
    per_word_rows = fam.build(rendered, multi.word_ids, fast=False, padding_side=multi.padding_side, shared_context=False)
    shared_rows = multi.collate(rows)
    ctx = fam.build(rendered, multi.word_ids, fast=True, padding_side=multi.padding_side)  # each example's tokens once

    def scores(pm, batch):
        return pm(batch, calibrate=False)

    def floor_forward():
        inputs = multi.method.model_inputs(bb, ctx)
        return bb.model.base_model(**inputs, use_cache=False).last_hidden_state

    def full_logits():
        inputs = multi.method.model_inputs(bb, per_word_rows)
        logp = bb.model(**inputs, use_cache=False).logits.float().log_softmax(-1)
        tgt = per_word_rows.target_ids
        at = logp[torch.arange(logp.shape[0])[:, None], per_word_rows.target_pos.clamp_min(0)]
        return at.gather(-1, tgt.clamp_min(0)[..., None]).squeeze(-1).masked_fill(tgt < 0, 0.0).sum(-1)

    # equal answers first (the class probabilities of the shared and per-word layouts)
    with torch.no_grad():
        a, b = scores(multi, shared_rows), scores(multi, per_word_rows)
    max_diff = float((a - b).abs().max())

    scoring = {"floor": floor_forward, "fast": lambda: scores(single, single.collate(rows)),
               "shared": lambda: scores(multi, shared_rows), "per-word": lambda: scores(multi, per_word_rows), "full-logits": full_logits}

    opt = {id(pm): torch.optim.AdamW(pm.method.trainable_parameters(bb), lr=1e-3) for pm in (multi, single)}

    def step(pm, batch_fn):
        def run():
            F.nll_loss(pm(batch_fn(), calibrate=False).float(), y).backward()
            opt[id(pm)].step()
            opt[id(pm)].zero_grad()
        return run

    def step_floor():
        emb = bb.embed(ctx.input_ids).detach().requires_grad_(True)
        out = bb.model.base_model(inputs_embeds=emb, attention_mask=ctx.attention_mask, use_cache=False).last_hidden_state
        out[:, -1].float().pow(2).mean().backward()

    training = {"floor": step_floor, "fast": step(single, lambda: single.collate(rows)), "shared": step(multi, lambda: multi.collate(rows)),
                "per-word": step(multi, lambda: fam.build([multi.render(r) for r in rows], multi.word_ids, fast=False,
                                                           padding_side=multi.padding_side, shared_context=False))}

    gm = GenerationModel(bb, "{soft*%d} Text: {text}\nLabel:" % args.soft, target="label", method="soft-prompt")
    gen_rows = [{"text": r["text"], "label": f"{r['label']} review, {r['label']} words, a {r['label']} text"} for r in rows]
    gen_batch = gm.collate(gen_rows)
    gopt = torch.optim.AdamW(gm.method.trainable_parameters(bb), lr=1e-3)

    def gen_ours():
        gm(gen_batch).backward()
        gopt.step()
        gopt.zero_grad()

    def gen_full():
        inputs = gm.method.model_inputs(bb, gen_batch)
        bb.model(**inputs, labels=gen_batch.labels, use_cache=False).loss.backward()
        gopt.step()
        gopt.zero_grad()

    def gen_floor():
        emb = bb.embed(gen_batch.input_ids).detach().requires_grad_(True)
        out = bb.model.base_model(inputs_embeds=emb, attention_mask=gen_batch.attention_mask, use_cache=False).last_hidden_state
        out[:, -1].float().pow(2).mean().backward()

    generation = {"floor": gen_floor, "target-only": gen_ours, "full-logits": gen_full}

    def timed(contenders, grad):
        with (torch.enable_grad if grad else torch.no_grad)():
            med = medians(alternate(contenders, args.repeats))
        return {"median_seconds": med, "over_floor": {k: v / med["floor"] for k, v in med.items()}}

    res = {"model": args.model, "data": name, "template": template, "words_multi": multi.word_ids, "words_single": single.word_ids,
           "batch": args.batch, "tokens_per_example": float(ctx.attention_mask.sum(1).float().mean()), "repeats": args.repeats,
           "vocabulary": bb.model.get_output_embeddings().weight.shape[0], "threads": torch.get_num_threads(),
           "shared_vs_per_word_max_abs_diff": max_diff}
    res["scoring"] = timed(scoring, grad=False)
    res["scoring"]["examples_per_second"] = {k: args.batch / v for k, v in res["scoring"]["median_seconds"].items()}
    res["training_step"] = timed(training, grad=True)
    res["generation_step"] = timed(generation, grad=True)
    res["generation_target_tokens"] = gen_batch.n_targets
    res["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
