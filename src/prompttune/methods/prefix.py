"""Prefix tuning (Li & Liang 2021) / P-tuning v2 (Liu et al. 2022): trainable keys and values in front of every
self-attention layer of a frozen backbone, injected at the attention level (see ``prefix_attention``).

Initialisation from text runs the model on that text and takes the keys and values each layer computes, so before
any training the prefix acts as if the text preceded the input (for causal LMs exactly: positions continue after
the prefix). The optional MLP reparameterisation (Li & Liang's) is residual with a zero-initialised output layer,
so it also starts at the initial prefix; it is folded into plain keys and values when the prompt is saved.
"""

from __future__ import annotations


import torch
from torch import nn

from ..errors import ConfigError
from ..schemas import PrefixOptions
from .base import Method


def default_init_text(verbalizer) -> str:
    """A neutral line naming the answers, e.g. ``Answer: negative or positive.``"""
    words = [ws[0].strip() for ws in verbalizer.words.values()] if verbalizer is not None else []
    if not words:
        return "Answer:"
    return "Answer: " + (" or ".join(words) if len(words) <= 2 else ", ".join(words[:-1]) + " or " + words[-1]) + ".\n"


class Prefix(Method):
    name = "prefix"
    Options = PrefixOptions
    default_lr = 5e-3
    servable = True  # on its own forward: the prefix is one per forward
    peft_type = "PREFIX_TUNING"
    description = "frozen backbone; trains keys/values in front of every attention layer (prefix tuning / P-tuning v2)"

    def attach(self, backbone, template, verbalizer, *, init: bool = True, seed: int = 0) -> None:
        super().attach(backbone, template, verbalizer, init=init, seed=seed)
        o = self.options
        points = backbone.prefix_injector().points
        shapes = {(p.heads, p.head_dim) for p in points}
        if o.shared and len(shapes) > 1:
            raise ConfigError(f"shared: true needs equal key/value shapes in every layer, found {sorted(shapes)}",
                              where="method.shared", fix="set shared: false")
        n_sets = 1 if o.shared else len(points)
        self.n_points = len(points)
        dims = [(p.heads, p.head_dim) for p in points[:n_sets]]
        text_ids = None
        if o.init == "auto" and o.init_text is None and verbalizer is None:  # generation: no label words to name
            o = self.options = o.model_copy(update={"init": "vocab"})
        if o.init in ("auto", "text"):
            text = o.init_text if o.init_text is not None else default_init_text(verbalizer)
            text_ids = backbone.tokenizer(text, add_special_tokens=False)["input_ids"]
            if not text_ids:
                raise ConfigError("init_text encodes to no tokens", where="method.init_text", fix="give a non-empty init_text")
        P = o.num_tokens or (len(text_ids) if text_ids else 10)
        self.length = P
        self.keys = nn.ParameterList([nn.Parameter(torch.zeros(h, P, d)) for h, d in dims])
        self.values = nn.ParameterList([nn.Parameter(torch.zeros(h, P, d)) for h, d in dims])
        if o.reparameterize == "mlp":
            out = sum(2 * h * d for h, d in dims)
            self.embedding = nn.Parameter(torch.randn(P, o.encoder_hidden, generator=torch.Generator().manual_seed(seed)) * 0.02)
            self.mlp = nn.Sequential(nn.Linear(o.encoder_hidden, o.encoder_hidden), nn.Tanh(), nn.Linear(o.encoder_hidden, out))
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)
        if init:
            with torch.no_grad():
                for i, (k, v) in enumerate(self._initial(backbone, text_ids, P, n_sets, seed)):
                    self.keys[i].copy_(k)
                    self.values[i].copy_(v)
        self.to(backbone.model.get_input_embeddings().weight.device)

    def _initial(self, backbone, text_ids, P, n_sets, seed):
        how = self.options.init
        gen = torch.Generator().manual_seed(seed)
        if how in ("auto", "text", "vocab"):
            ids = text_ids if text_ids else torch.randint(0, min(5000, len(backbone.tokenizer)), (P,), generator=gen).tolist()
            ids = (ids * -(-P // len(ids)))[:P]
            kv = backbone.text_kv(ids)
            if n_sets == 1 and len(kv) > 1:  # shared: the mean over layers
                kv = [(torch.stack([k for k, _ in kv]).mean(0), torch.stack([v for _, v in kv]).mean(0))]
            return kv[:n_sets]
        ref = backbone.text_kv(torch.randint(0, min(5000, len(backbone.tokenizer)), (8,), generator=gen).tolist())
        return [(torch.randn(k.shape[0], P, k.shape[2], generator=gen) * k.std(), torch.randn(v.shape[0], P, v.shape[2], generator=gen) * v.std())
                for k, v in ref[:n_sets]]

    # ---- the prefix the backbone sees --------------------------------------------------------
    def prefix_kv(self, backbone) -> list[tuple[torch.Tensor, torch.Tensor]]:
        keys, values = list(self.keys), list(self.values)
        if self.options.reparameterize == "mlp":
            delta = self.mlp(self.embedding)  # (P, sum of 2*h*d)
            out, at = [], 0
            for k, v in zip(keys, values):
                h, P, d = k.shape
                dk = delta[:, at:at + h * d].view(P, h, d).transpose(0, 1)
                dv = delta[:, at + h * d:at + 2 * h * d].view(P, h, d).transpose(0, 1)
                at += 2 * h * d
                out.append((k + dk, v + dv))
            keys, values = [k for k, _ in out], [v for _, v in out]
        pairs = list(zip(keys, values))
        return pairs * self.n_points if len(pairs) == 1 and self.n_points > 1 else pairs

    # ---- artifact: plain keys and values --------------------------------------------------------
    def prompt_tensors(self) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            pairs = self.prefix_kv(None)[: len(self.keys)]
        out = {k: v.detach().cpu().contiguous() for k, v in super().prompt_tensors().items()
               if not k.startswith(("keys.", "values.", "embedding", "mlp."))}
        for i, (k, v) in enumerate(pairs):
            out[f"keys.{i}"] = k.detach().cpu().contiguous()
            out[f"values.{i}"] = v.detach().cpu().contiguous()
        return out

    def config_dict(self) -> dict:
        d = super().config_dict()
        if self.options.reparameterize != "none":
            d.update(reparameterize="none", folded=self.options.reparameterize)
        d["num_tokens"] = self.length
        return d
