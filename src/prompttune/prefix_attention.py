"""Deep prompts at the attention level, through transformers' public ``AttentionInterface``.

Prefix tuning / P-tuning v2 put trainable keys and values in front of every self-attention layer. Instead of
passing them as a ``past_key_values`` cache (which breaks for encoder-only models, whenever transformers changes its
Cache classes, and under gradient checkpointing), a ``PrefixInjector`` registers an attention function that
concatenates the prefix to the keys and values a layer computed and extends the mask (and T5's position bias)
to match, then calls the model's own ``sdpa`` or ``eager`` attention. The KV cache of ``generate()`` holds only real
tokens; the prefix joins them in every call. Nothing inside the model is patched, so every model whose attention
goes through the interface (Llama, GPT-2, BERT, T5, BART, Gemma, ...) works the same way.

Injection points (the self-attention modules, in call order) are found by one small forward pass that records
which modules call the interface; cross-attention modules are left alone.
"""

from __future__ import annotations

import re
import sys
import weakref
from dataclasses import dataclass

import torch

from .errors import BackboneError

_OWNER: "weakref.WeakKeyDictionary[torch.nn.Module, PrefixInjector]" = weakref.WeakKeyDictionary()
_CROSS = re.compile(r"cross|encdec|encoder_attn", re.IGNORECASE)
_SUPPORTED = ("sdpa", "eager")


@dataclass(frozen=True)
class Point:
    name: str  # module path in the model
    heads: int  # key/value heads
    head_dim: int


def _impl_name(base: str) -> str:
    return f"prompttune_prefix_{base}"


def _base_function(module, base: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if base == "eager":
        fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if fn is None:
            raise BackboneError(f"{type(module).__name__} has no eager attention function to wrap",
                                fix="load the model with attn_implementation sdpa")
        return fn
    return ALL_ATTENTION_FUNCTIONS[base]


def _prefixed_attention(module, query, key, value, attention_mask, *args, **kwargs):
    inj = _OWNER.get(module)
    base = _base_function(module, inj.base if inj is not None else "sdpa")
    if inj is None:
        return base(module, query, key, value, attention_mask, *args, **kwargs)
    if inj.recording is not None:
        inj.recording.append((module, key, value))
    i = inj.index.get(module)
    if inj.prefix is None or i is None:
        return base(module, query, key, value, attention_mask, *args, **kwargs)
    pk, pv = inj.prefix[i]
    B, P = key.shape[0], pk.shape[-2]
    pk = (pk if pk.dim() == 4 else pk[None]).to(key.dtype).expand(B, -1, -1, -1)
    pv = (pv if pv.dim() == 4 else pv[None]).to(value.dtype).expand(B, -1, -1, -1)
    Q, K = query.shape[2], key.shape[2]
    key = torch.cat([pk, key], dim=2)
    value = torch.cat([pv, value], dim=2)
    is_causal = kwargs.pop("is_causal", None)
    if attention_mask is None:
        causal = (is_causal if is_causal is not None else getattr(module, "is_causal", False)) and Q > 1
        attention_mask = torch.ones(Q, K, dtype=torch.bool, device=query.device)
        if causal:
            attention_mask = attention_mask.tril(K - Q)
        attention_mask = attention_mask[None, None]
        if inj.base == "eager":
            attention_mask = torch.zeros(attention_mask.shape, dtype=query.dtype, device=query.device).masked_fill(
                ~attention_mask, torch.finfo(query.dtype).min)
    attention_mask = attention_mask[..., :K]
    ones = (torch.ones if attention_mask.dtype == torch.bool else torch.zeros)(
        *attention_mask.shape[:-1], P, dtype=attention_mask.dtype, device=attention_mask.device)
    attention_mask = torch.cat([ones, attention_mask], dim=-1)
    bias = kwargs.get("position_bias")
    if bias is not None:  # T5: relative position bias (with the mask folded in) covers real keys only
        kwargs["position_bias"] = torch.cat([bias.new_zeros(*bias.shape[:-1], P), bias[..., -K:]], dim=-1)
    return base(module, query, key, value, attention_mask, *args, **kwargs)


def _register(base: str) -> str:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    name = _impl_name(base)
    AttentionInterface.register(name, _prefixed_attention)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    return name


class PrefixInjector:
    """Installed once per model; holds the prefix the next forward passes should see (``None`` = no prefix).

    The prefix stays set after a forward, so gradient-checkpointed layers recompute with the same tensors
    during backward. Every model that shares the backbone sets its own prefix (or ``None``) before each forward.
    """

    def __init__(self, model, probe):
        impl = model.config._attn_implementation
        base = impl[len("prompttune_prefix_"):] if impl and impl.startswith("prompttune_prefix_") else (impl or "eager")
        if base not in _SUPPORTED:
            raise BackboneError(f"prefix methods need sdpa or eager attention, but the model uses {impl!r}",
                                fix="load the model with attn_implementation='sdpa' (the default) or 'eager'")
        self.base = base
        self.model = model
        self.prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.recording: list | None = None
        self.index: dict = {}
        for m in model.modules():
            _OWNER[m] = self
        model.set_attn_implementation(_register(base))
        if model.config._attn_implementation != _impl_name(base):
            raise BackboneError(f"{type(model).__name__} does not route attention through transformers' AttentionInterface",
                                fix="use a model whose attention supports custom implementations (most models in transformers 5)")
        names = {m: n for n, m in model.named_modules()}
        calls = self.record(probe)
        points, index, seen = [], {}, set()
        for module, key, _ in calls:
            if module in seen or _CROSS.search(names.get(module, "")):
                continue
            seen.add(module)
            index[module] = len(points)
            points.append(Point(names.get(module, type(module).__name__), key.shape[1], key.shape[-1]))
        if not points:
            raise BackboneError(f"found no attention layers to put a prefix in ({type(model).__name__})",
                                fix="use a model whose attention goes through transformers' AttentionInterface")
        self.index = index
        self.points: list[Point] = points

    @classmethod
    def of(cls, model, probe) -> "PrefixInjector":
        existing = getattr(model, "_prompttune_injector", None)
        if existing is None:
            existing = cls(model, probe)
            model._prompttune_injector = existing
        return existing

    def record(self, run) -> list:
        """Run ``run()`` with no prefix and return the (module, key, value) of every attention call."""
        saved, self.prefix, self.recording = self.prefix, None, []
        try:
            with torch.no_grad():
                run()
            return self.recording
        finally:
            self.recording, self.prefix = None, saved

    def layer_kv(self, run) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Keys and values (heads, T, head_dim) each injection point computes for the first row of ``run()``."""
        out: list = [None] * len(self.points)
        for module, key, value in self.record(run):
            i = self.index.get(module)
            if i is not None and out[i] is None:
                out[i] = (key[0].detach().float().cpu(), value[0].detach().float().cpu())
        return out
