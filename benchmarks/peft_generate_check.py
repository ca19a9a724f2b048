"""Whose generated text is right: prompttune's or PeftModel.generate with the same prompt-tuning adapter?

The four generation tasks of ``serve_load.py --generate`` (8-token soft prompts on SmolLM2-135M) are given to both
libraries with the very same soft rows. For each request three greedy decodings are compared:

  - ours:               ``GenerationModel.generate`` (HF ``generate`` on input embeddings, with the KV cache)
  - PEFT, no cache:     token by token through ``PeftModel``'s own forward, the whole sequence each step (the reference)
  - PEFT ``generate``:  ``PeftModel.generate`` (its cache path)

    .venv/bin/python benchmarks/peft_generate_check.py --requests 8 --max-new-tokens 8
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_load  # noqa: E402


def _cut(tok, ids: list[int]) -> str:
    if tok.eos_token_id in ids:
        ids = ids[: ids.index(tok.eos_token_id)]
    return tok.decode(ids, skip_special_tokens=True).strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import peft
    import transformers

    from prompttune import load
    from prompttune.backbone import Backbone

    bb = Backbone.load(args.model)
    tok = bb.tokenizer
    arts = serve_load._generation_artifacts(bb, Path(tempfile.mkdtemp(prefix="peft-check-")))
    model, tasks = serve_load._peft_adapters(copy.deepcopy(bb), arts, generation=True)
    n = args.max_new_tokens
    rows, agree = [], {"ours == PEFT without cache": 0, "PEFT generate == PEFT without cache": 0}
    for name, text in serve_load._texts(args.requests, 0, serve_load.GEN_TASKS):
        ours = load(arts[name], backbone=bb).generate([text], max_new_tokens=n)[0]
        ids = torch.tensor([tasks[name][1].render({"text": text}).ids])
        model.set_adapter(name)
        with torch.inference_mode():
            cur = ids
            for _ in range(n):
                nxt = model(input_ids=cur, attention_mask=torch.ones_like(cur)).logits[0, -1].argmax()
                cur = torch.cat([cur, nxt.view(1, 1)], 1)
                if int(nxt) == tok.eos_token_id:
                    break
            reference = _cut(tok, cur[0, ids.shape[1]:].tolist())
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                 pad_token_id=bb.family.pad_id, eos_token_id=tok.eos_token_id)
            peft_gen = _cut(tok, out[0, ids.shape[1]:].tolist())
        agree["ours == PEFT without cache"] += ours == reference
        agree["PEFT generate == PEFT without cache"] += peft_gen == reference
        rows.append({"task": name, "ours": ours, "peft_without_cache": reference, "peft_generate": peft_gen})
        print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
    record = {"model": args.model, "peft": peft.__version__, "transformers": transformers.__version__, "requests": len(rows),
              "max_new_tokens": n, "agreement": agree, "rows": rows}
    print(json.dumps({k: f"{v} of {len(rows)}" for k, v in agree.items()}))
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
