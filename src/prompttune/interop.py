"""PEFT interoperability: export soft-prompt and prefix artifacts as PEFT adapters, import PEFT prompt-learning adapters.

Export writes ``adapter_config.json`` + ``adapter_model.safetensors`` through PEFT's own classes (so the files are
exactly what ``peft.PeftModel.from_pretrained`` expects), plus ``prompttune.json`` with the template and verbalizer
that PEFT has no place for. Import reads an adapter with PEFT and takes its prompt as PEFT computes it (a P-tuning
encoder or a prefix projection is folded in), so the imported prompt gives the same outputs.

What maps: prompt tuning / P-tuning <-> ``soft-prompt`` whose soft tokens all come first; prefix tuning <->
``prefix``; both on causal LMs, where the two libraries put the prompt in the same place. Anything else (soft tokens
in the middle of a template, prefixes in an encoder) has no PEFT equivalent and is refused with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .errors import ArtifactError


def _peft_ready(pm, what: str) -> None:
    fam = pm.backbone.family
    if fam.peft_task_type is None:
        raise ArtifactError(f"{what} on a {fam.name} backbone has no PEFT equivalent that gives the same outputs",
                            fix="PEFT export works for soft-prompt and prefix artifacts on causal LMs")


def _method_for(peft_type: str) -> str:
    """The registered method whose prompt is a PEFT adapter of this type."""
    from .methods import METHODS

    return next(name for name, m in METHODS.items() if m.peft_type == peft_type)


def _leading_soft_count(pm) -> int:
    """The number of soft tokens, provided they all come first in every rendered example, in table order."""
    probe = {f: "x" for f in pm.template.fields}
    r = pm.render(probe)
    n = pm.method.soft.weight.shape[0] if pm.method.soft is not None else 0
    if n == 0 or list(r.soft[:n]) != list(range(n)) or any(s >= 0 for s in r.soft[n:]):
        raise ArtifactError(f"the template {pm.template.text!r} puts soft tokens where PEFT cannot: PEFT's prompt tuning only "
                            "prepends virtual tokens to the whole input", where="template",
                            fix="export only prompts whose soft tokens all come first (e.g. method.placement: prefix)")
    return n


def _without_leading_soft(template) -> str:
    """The template text PEFT's virtual tokens go in front of."""
    from .template import Soft, segment_text

    segs = list(template.segments)
    while segs and isinstance(segs[0], Soft):
        segs.pop(0)
    return "".join(segment_text(s) for s in segs)


def export_peft(pm, directory) -> Path:
    """Write ``pm``'s prompt as a PEFT adapter directory; returns its path."""
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

    name, kind = pm.method.name, pm.method.peft_type
    if kind is None:
        raise ArtifactError(f"method {name!r} has no PEFT prompt-learning equivalent", fix="export soft-prompt or prefix artifacts")
    _peft_ready(pm, name)
    if pm.method.trained_head:
        raise ArtifactError("this prompt was trained with a task head, which PEFT's prompt adapters do not carry",
                            fix="export prompts trained on language-model backbones")
    model = pm.backbone.model
    task_type = pm.backbone.family.peft_task_type
    if kind == "PROMPT_TUNING":
        n = _leading_soft_count(pm)
        weight = pm.method.soft_table(pm.backbone).detach().float().cpu()
        cfg = PromptTuningConfig(task_type=task_type, num_virtual_tokens=n, token_dim=weight.shape[1])
    else:
        if pm.method.soft is not None:
            raise ArtifactError("a prefix prompt with soft tokens in its template cannot be one PEFT adapter", where="template",
                                fix="remove the {soft} placeholders")
        pairs = [(k.detach().float().cpu(), v.detach().float().cpu()) for k, v in pm.method.prefix_kv(pm.backbone)]
        H, P, D = pairs[0][0].shape
        if any(k.shape != (H, P, D) for k, _ in pairs):
            raise ArtifactError("layers with different key/value shapes have no PEFT prefix equivalent", fix="-")
        # PEFT's layout: (P, layers * 2 * heads * head_dim), keys and values of layer i at 2i and 2i + 1
        weight = torch.stack([t.transpose(0, 1) for kv in pairs for t in kv], dim=1).reshape(P, -1)
        cfg = PrefixTuningConfig(task_type=task_type, num_virtual_tokens=P, num_layers=len(pairs), token_dim=H * D,
                                 num_attention_heads=H, prefix_projection=False)
    out = Path(directory)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    pm.backbone.set_prefix(None)
    try:
        peft_model = get_peft_model(model, cfg)
        with torch.no_grad():
            emb = peft_model.prompt_encoder["default"].embedding.weight
            emb.copy_(weight.to(emb.dtype))
        peft_model.save_pretrained(tmp)
        (tmp / "prompttune.json").write_text(json.dumps({
            "template": _without_leading_soft(pm.template) if kind == "PROMPT_TUNING" else pm.template.text, "verbalizer": pm.verbalizer.to_dict(), "method": pm.method.config_dict(),
            "backbone": pm.backbone.name, "note": "PEFT adapters carry no template or verbalizer; prompttune keeps them here",
        }, indent=2, ensure_ascii=False), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for n, p in model.named_parameters():
            p.requires_grad_(requires.get(n, False))
    return out


def import_peft(adapter_dir, backbone, template: str | None = None, verbalizer=None):
    """A PromptModel from a PEFT prompt-tuning, P-tuning or prefix-tuning adapter on ``backbone``.

    ``template`` / ``verbalizer`` default to those in the adapter's ``prompttune.json`` (written by ``export_peft``).
    For prompt tuning, the virtual tokens are put in front of the template as ``{soft*N}``."""
    from peft import PeftConfig, PeftModel

    from .model import PromptModel

    d = Path(adapter_dir)
    if not (d / "adapter_config.json").is_file():
        raise ArtifactError(f"{d} has no adapter_config.json, so it is not a PEFT adapter", where=str(d),
                            fix="give the directory that PeftModel.save_pretrained wrote")
    extra = json.loads((d / "prompttune.json").read_text(encoding="utf-8")) if (d / "prompttune.json").is_file() else {}
    template = template or extra.get("template")
    verbalizer = verbalizer or (extra.get("verbalizer") or {}).get("words")
    if not template or not verbalizer:
        raise ArtifactError("a PEFT adapter has no template or verbalizer", where=str(d),
                            fix="pass a template and a verbalizer (--template, --verbalizer)")
    cfg = PeftConfig.from_pretrained(str(d))
    kind = str(cfg.peft_type.value if hasattr(cfg.peft_type, "value") else cfg.peft_type)
    if kind not in ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING"):
        raise ArtifactError(f"PEFT adapter type {kind} is not a prompt-learning adapter prompttune can import", where=str(d),
                            fix="import prompt tuning, P-tuning or prefix tuning adapters")
    model = backbone.model
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    backbone.set_prefix(None)
    try:
        peft_model = PeftModel.from_pretrained(model, str(d))
        if peft_model.peft_config["default"].inference_mode:  # saved adapters hold the prompt with any encoder folded in
            emb = peft_model.prompt_encoder["default"].embedding.weight.detach().float().cpu()
        else:
            emb = peft_model.get_prompt_embedding_to_save("default").float()
    except Exception as e:
        raise ArtifactError(f"PEFT could not load {d} onto {backbone.name!r}: {e}", where=str(d),
                            fix="import the adapter onto the model it was trained for") from None
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(requires.get(n, False))
    from .template import Template

    tpl = Template(template)
    if kind == "PREFIX_TUNING":
        if tpl.has_soft:
            raise ArtifactError("a prefix adapter is imported onto a template without {soft} placeholders", where="template",
                                fix="remove the {soft} placeholders")
        pm = PromptModel(backbone, tpl, verbalizer, _method_for(kind), method_options={"init": "random", "num_tokens": cfg.num_virtual_tokens},
                         init=False)
        _peft_ready(pm, "a prefix adapter")
        L, H = cfg.num_layers, cfg.num_attention_heads
        P = cfg.num_virtual_tokens
        if len(pm.method.keys) != L or pm.method.keys[0].shape[0] != H:
            raise ArtifactError(f"the adapter has {L} layers x {H} heads, the backbone {len(pm.method.keys)} x {pm.method.keys[0].shape[0]}",
                                where=str(d), fix="import the adapter onto the model it was trained for")
        kv = emb.view(P, 2 * L, H, -1).permute(1, 2, 0, 3)  # (2L, H, P, D)
        with torch.no_grad():
            for i in range(L):
                pm.method.keys[i].copy_(kv[2 * i])
                pm.method.values[i].copy_(kv[2 * i + 1])
        return pm
    if tpl.has_soft:
        raise ArtifactError("a prompt-tuning adapter brings its own virtual tokens; the template must have no {soft}", where="template",
                            fix="remove the {soft} placeholders")
    n = cfg.num_virtual_tokens
    pm = PromptModel(backbone, tpl.with_soft_prefix(n), verbalizer, _method_for("PROMPT_TUNING"), method_options={"init": "random"},
                     init=False)
    _peft_ready(pm, "a prompt-tuning adapter")
    with torch.no_grad():
        pm.method.soft.weight.copy_(emb[:n])
    return pm
