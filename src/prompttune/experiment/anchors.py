"""Anchors: what a user would run instead of prompttune, run by its own library, for a fair side-by-side.

An anchor is a grid method entry (``prompttune experiment``) trained by PEFT's own code, configured as PEFT's
documentation shows, on the very rows a prompttune cell of the same seed trains on, and scored on the same test rows
by the same scorer (so per-item predictions pair up for McNemar's test):

- ``peft-prompt-tuning``: ``PromptTuningConfig`` as PEFT's prompt-tuning guide writes it: virtual tokens initialised
  from a task instruction (``PromptTuningInit.TEXT``), AdamW at lr 3e-2, batch 8, linear decay, no warm-up;
- ``peft-lora``: ``LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=32, lora_dropout=0.1)`` as PEFT's quicktour
  writes it, AdamW at lr 1e-3.

Both train with the causal-LM loss on the label word after the rendered template (what PEFT's recipes do; computed
by :func:`label_loss` with the output layer only where a label token is predicted: the same loss and gradients), for
as many steps as prompttune's default budget gives the same data, and keep the final state (PEFT's recipes use no dev
set). The trained prompt is taken into prompttune through :func:`prompttune.interop.import_peft` (prompt tuning) or
merged into the weights (LoRA), and scored by label-word log-probabilities like every other cell.
"""

from __future__ import annotations

import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class Anchor:
    name: str
    doc: str
    defaults: dict[str, Any] = field(default_factory=dict)


_COMMON = {"lr": None, "batch_size": 8, "steps": None}
ANCHORS: dict[str, Anchor] = {
    "peft-prompt-tuning": Anchor("peft-prompt-tuning", "PEFT PromptTuningConfig, TEXT init (PEFT's prompt-tuning guide)",
                                 {**_COMMON, "lr": 3e-2, "num_virtual_tokens": 20, "init_text": None}),
    "peft-lora": Anchor("peft-lora", "PEFT LoraConfig r=8, alpha 32, dropout 0.1 (PEFT's quicktour)",
                        {**_COMMON, "lr": 1e-3, "r": 8, "lora_alpha": 32, "lora_dropout": 0.1}),
}


def anchor_options(entry: dict, where: str) -> dict:
    """The anchor's options: its documented defaults with the entry's keys over them (unknown keys refused)."""
    a = ANCHORS[entry["name"]]
    extra = {k: v for k, v in entry.items() if k != "name"}
    unknown = [k for k in extra if k not in a.defaults]
    if unknown:
        raise ConfigError(f"{a.name} has no option {unknown[0]!r}", where=where, fix=f"its options are: {', '.join(a.defaults)}")
    return {**a.defaults, **extra}


def check_anchor_template(template: str, where: str) -> None:
    from ..template import Template, tail_is_empty

    t = Template(template)
    if t.has_soft or not tail_is_empty(t.segments):
        raise ConfigError("a PEFT anchor needs a template that ends with {mask} and has no {soft} tokens (PEFT adds its own)",
                          where=where, fix="give the anchor entry its own prompt: {template: \"...: {mask}\"}")


def _instruction(labels: list[str]) -> str:
    return "Classify the text as " + (", ".join(labels[:-1]) + " or " + labels[-1] if len(labels) > 1 else labels[0]) + ":"


def train_anchor(name: str, options: dict, cfg, train: list[dict], *, log=print):
    """Train anchor ``name`` on ``train`` with PEFT; return (a PromptModel that scores like any cell, a training record)."""
    from peft import LoraConfig, PromptTuningConfig, PromptTuningInit, get_peft_model
    from transformers import get_linear_schedule_with_warmup

    from ..interop import import_peft
    from ..model import PromptModel
    from ..pipeline import build_model
    from ..train import steps_for

    zs = build_model(cfg, method="zero-shot")  # the backbone, the rendering and the label words every cell uses
    backbone, tok = zs.backbone, zs.backbone.tokenizer
    if backbone.family.peft_task_type != "CAUSAL_LM":
        raise ConfigError(f"{name} runs PEFT's causal-LM recipe; {cfg.model.name} is a {backbone.family.name} model",
                          where="grid.methods", fix="use the PEFT anchors with causal LMs")
    first_word = [zs.word_ids[int((zs.word_class == c).nonzero()[0])] for c in range(len(zs.labels))]

    def encode(row):
        r = zs.render(row)
        target = list(first_word[zs.verbalizer.label_index(row["label"])])
        return r.ids[:r.mask] + target, [-100] * r.mask + target

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def collate(pairs):
        n = max(len(i) for i, _ in pairs)
        ids, lab = torch.full((len(pairs), n), pad), torch.full((len(pairs), n), -100)
        att = torch.zeros((len(pairs), n), dtype=torch.long)
        for k, (i, l) in enumerate(pairs):
            ids[k, :len(i)], lab[k, :len(l)], att[k, :len(i)] = torch.tensor(i), torch.tensor(l), 1
        return ids, att, lab

    seed = cfg.train.seed
    torch.manual_seed(seed)
    batch = int(options["batch_size"])
    steps = int(options["steps"] or steps_for(len(train), batch))
    with tempfile.TemporaryDirectory() as tdir:
        if name == "peft-prompt-tuning":
            tok.save_pretrained(tdir)  # PEFT's TEXT init reads the tokenizer from a path
            pcfg = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=int(options["num_virtual_tokens"]),
                                      prompt_tuning_init=PromptTuningInit.TEXT, tokenizer_name_or_path=tdir,
                                      prompt_tuning_init_text=options["init_text"] or _instruction(zs.labels))
        else:
            pcfg = LoraConfig(task_type="CAUSAL_LM", r=int(options["r"]), lora_alpha=int(options["lora_alpha"]),
                              lora_dropout=float(options["lora_dropout"]))
        model = get_peft_model(backbone.model, pcfg)
    virtual = int(options["num_virtual_tokens"]) if name == "peft-prompt-tuning" else 0  # PEFT puts them in front
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(options["lr"]))
    sched = get_linear_schedule_with_warmup(opt, 0, steps)
    rng, order, losses = random.Random(seed), [], []
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        if len(order) < batch:
            more = list(range(len(train)))
            rng.shuffle(more)
            order += more
        idx, order = order[:batch], order[batch:]
        ids, att, lab = collate([encode(train[i]) for i in idx])
        loss = label_loss(model, ids, att, lab, virtual=virtual)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, steps // 4) == 0:
            log(f"{name}: step {step + 1}/{steps}, loss {sum(losses[-10:]) / len(losses[-10:]):.4f}")
    record = {"steps": steps, "seconds": time.perf_counter() - t0, "trainable_parameters": sum(p.numel() for p in params),
              "final_loss": losses[-1], "losses": [round(x, 5) for x in losses], "options": options}
    model.eval()
    if name == "peft-prompt-tuning":
        with tempfile.TemporaryDirectory() as tdir:
            model.save_pretrained(tdir)
            base = model.get_base_model()
            backbone.model = base
            pm = import_peft(tdir, backbone, cfg.prompt.template, cfg.prompt.verbalizer)
    else:
        backbone.model = model.merge_and_unload()
        pm = PromptModel(backbone, cfg.prompt.template, cfg.prompt.verbalizer, "zero-shot", max_length=cfg.prompt.max_length)
    return pm, record


def label_loss(model, ids: torch.Tensor, att: torch.Tensor, lab: torch.Tensor, *, virtual: int = 0) -> torch.Tensor:
    """The causal-LM loss ``model(input_ids, attention_mask, labels=lab).loss`` computes (mean cross-entropy over the
    label tokens), with the output layer run only at the positions that predict one (transformers' ``logits_to_keep``
    mask): the same value and gradients, without a 49,152-word softmax at every position of every row."""
    import torch.nn.functional as F

    want = lab[:, 1:] != -100  # position j predicts token j + 1
    keep = torch.zeros((ids.shape[0], virtual + ids.shape[1]), dtype=torch.bool)
    keep[:, virtual:virtual + ids.shape[1] - 1] = want
    logits = model(input_ids=ids, attention_mask=att, logits_to_keep=keep).logits  # (label tokens, vocab), row-major
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), lab[:, 1:][want])


def run_anchor(name: str, options: dict, cfg, out: Path, *, log=print) -> dict:
    """Train and test one anchor cell; write metrics.json and predictions.jsonl into ``out``; return the metrics."""
    from ..files import staged_directory, write_json
    from ..pipeline import load_splits
    from ..tasks.classification import write_predictions

    t0 = time.perf_counter()
    train, _dev, test = load_splits(cfg)  # the same sample a prompttune cell of this seed draws; dev is not used
    log(f"data: {len(train)} train, {len(test)} test examples ({name} uses no dev set)")
    pm, record = train_anchor(name, options, cfg, train, log=log)
    m = pm.evaluate(test, batch_size=cfg.train.eval_batch_size)
    log(f"test accuracy: {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f} on {len(test)}")
    with staged_directory(out, ours=lambda p: True, overwrite=True) as stage:
        write_predictions(stage, pm.labels, test, m)
        metrics = {k: v for k, v in m.items() if k not in ("predictions", "probabilities")}
        metrics.update({"anchor": name, "training": record, "trainable_parameters": record["trainable_parameters"],
                        "seconds_total": time.perf_counter() - t0})
        write_json(stage / "metrics.json", metrics)
    return metrics
