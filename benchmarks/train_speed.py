"""Training-step cost of every prompt method against PEFT and the floor, on one batch, measured alternately.

Contenders (same rows, same tokens):
  floor          a bare forward + backward of the frozen backbone (gradient only to the input embeddings)
  soft-prompt    prompttune's soft prompt step (verbalizer loss; label-word rows of the output layer at one position)
  peft-prompt    PEFT PromptTuningConfig, PEFT's usual recipe: LM loss over the full vocabulary at every position
  prefix         prompttune's prefix step (attention-level keys/values in every layer)
  peft-prefix    PEFT PrefixTuningConfig (past_key_values cache), LM loss as PEFT's examples do
  lora           prompttune's LoRA step (peft-injected, on a copy of the model)

On a GPU it reports peak memory per contender too. Speed does not depend on the weights' values, so
``--random-weights`` builds the model from its config alone (how the GPU run was done: the weights do not travel).

    .venv/bin/python benchmarks/train_speed.py --repeats 5 --batch 8 --json benchmarks/results/train_speed_cpu.json
    python benchmarks/train_speed.py --model-dir smollm2-config --random-weights --rows rows.jsonl \\
        --device cuda --dtype bfloat16 --batch 64 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json

import torch
import torch.nn.functional as F
from timing import alternate, medians


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="model name (short name, hub id or directory)")
    ap.add_argument("--model-dir", default=None, help="directory with config.json + tokenizer (with --random-weights)")
    ap.add_argument("--random-weights", action="store_true", help="build the model from its config, random weights")
    ap.add_argument("--rows", default=None, help="JSONL of {text, label} rows (default: the movie-review corpus)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=8, help="soft tokens / prefix length")
    ap.add_argument("--only", nargs="*", default=None, help="run only these contenders")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import transformers
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

    from prompttune.backbone import Backbone
    from prompttune.model import PromptModel

    dtype = getattr(torch, args.dtype)
    if args.random_weights:
        tok = transformers.AutoTokenizer.from_pretrained(args.model_dir)
        cfg = transformers.AutoConfig.from_pretrained(args.model_dir)
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        bb = Backbone(model, tok, family="causal-lm", name=args.model_dir)
    else:
        bb = Backbone.load(args.model, dtype=args.dtype)
    bb.model.to(args.device).eval()
    if args.rows:
        rows = [json.loads(line) for line in open(args.rows, encoding="utf-8") if line.strip()]
    else:
        from prompttune import data

        rows = data.few_shot(data.load_builtin("movie-reviews", "train"), 64, 0)
    rows = (rows * -(-args.batch // len(rows)))[: args.batch]
    template = "Review: {text}\nSentiment: {mask}"
    verbalizer = {"negative": "negative", "positive": "positive"}
    lora_model = copy.deepcopy(bb.model)  # LoRA changes the modules it wraps; keep it off the others' model

    pm = PromptModel(bb, template, verbalizer, "soft-prompt", method_options={"num_tokens": args.tokens})
    px = PromptModel(bb, template, verbalizer, "prefix", method_options={"num_tokens": args.tokens, "init": "random"})
    lbb = Backbone(lora_model, bb.tokenizer, family="causal-lm", name="lora-copy")
    lo = PromptModel(lbb, template, verbalizer, "lora")
    y = pm.labels_tensor(rows).to(args.device)
    opts = {id(m): torch.optim.AdamW(m.method.trainable_parameters(m.backbone), lr=1e-3) for m in (pm, px, lo)}

    # The same token rows for every contender: the soft-prompt rows (soft placeholders included) + the label word.
    batch = pm.collate(rows)
    ids, attn = batch.input_ids, batch.attention_mask
    label_tok = torch.tensor([pm.word_ids[int(c)][0] for c in y.cpu()])
    full_ids = torch.cat([ids, torch.full((ids.shape[0], 1), bb.family.pad_id)], 1)
    full_attn = torch.cat([attn, torch.zeros_like(attn[:, :1])], 1)
    lens = attn.sum(1)
    full_ids[torch.arange(len(lens)), lens] = label_tok
    full_attn[torch.arange(len(lens)), lens] = 1
    full_ids, full_attn = full_ids.to(args.device), full_attn.to(args.device)
    lm_labels = full_ids.masked_fill(full_attn == 0, -100)
    plain = (full_ids[:, args.tokens:], full_attn[:, args.tokens:], lm_labels[:, args.tokens:])  # PEFT prepends its own

    def ours(m):
        def step():
            logp = m(m.collate(rows), calibrate=False)
            F.nll_loss(logp.float(), y).backward()
            opts[id(m)].step()
            opts[id(m)].zero_grad()
        return step

    def step_floor():
        bb.set_prefix(None)
        emb = bb.embed(full_ids).detach().requires_grad_(True)
        out = bb.model(inputs_embeds=emb, attention_mask=full_attn, use_cache=False)
        out.logits.float().logsumexp(-1).mean().backward()

    peft_models = {}

    def peft_step(kind):
        def step():
            bb.set_prefix(None)  # our attention hook stays out of PEFT's way
            if kind not in peft_models:
                cfg = (PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=args.tokens) if kind == "prompt"
                       else PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=args.tokens))
                model = get_peft_model(bb.model, cfg)
                peft_models[kind] = (model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3))
            model, opt = peft_models[kind]
            out = model(input_ids=plain[0], attention_mask=plain[1], labels=plain[2])
            out.loss.backward()
            opt.step()
            opt.zero_grad()
        return step

    contenders = {"floor": step_floor, "soft-prompt": ours(pm), "peft-prompt": peft_step("prompt"), "prefix": ours(px),
                  "peft-prefix": peft_step("prefix"), "lora": ours(lo)}
    if args.only:
        contenders = {k: v for k, v in contenders.items() if k in args.only or k == "floor"}
    cuda = args.device.startswith("cuda")
    peak: dict[str, int] = {}
    for name, fn in contenders.items():  # warm-up (and peak memory)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        fn()
        if cuda:
            torch.cuda.synchronize()
            peak[name] = torch.cuda.max_memory_allocated()
    med = medians(alternate(contenders, args.repeats, warm_up=False, sync=torch.cuda.synchronize if cuda else None))
    res = {"device": torch.cuda.get_device_name() if cuda else "cpu", "dtype": args.dtype, "random_weights": args.random_weights,
           "batch": list(full_ids.shape), "tokens": args.tokens, "repeats": args.repeats, "median_seconds": med,
           "over_floor": {k: v / med["floor"] for k, v in med.items()},
           "ours_over_peft": {k: med[k] / med[p] for k, p in (("soft-prompt", "peft-prompt"), ("prefix", "peft-prefix"))
                              if k in med and p in med},
           "peak_memory_bytes": peak or None, "torch": torch.__version__, "transformers": transformers.__version__}
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
