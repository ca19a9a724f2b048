"""The causal-LM family: the label word is the next token(s) after the mask's context; multi-token words share
their context's keys/values; the generation loss reads the output layer only at target positions."""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..errors import TemplateError

from ..template import fill_mask
from .rows import GenBatch, Rows, mask_of, pack, pad, scored_rows
from .family import Family, PromptCache

CE_CHUNK = 1 << 24  # logits (16M floats, 64 MB) above which the token loss is computed in chunks of positions


class CausalLM(Family):
    name = "causal-lm"
    auto_class = "AutoModelForCausalLM"
    generates = True
    caches_prompt = True
    prefix_shifts_positions = True  # as with a cache holding the prefix (PEFT's prefix tuning does the same)
    peft_task_type = "CAUSAL_LM"
    target_takes_trailing_space = True

    def fast_ok(self, words, template_tail_empty):
        return template_tail_empty and all(len(w) == 1 for w in words)

    def reserve(self, words):
        return max(len(w) for w in words) - 1

    def build(self, rendered, words, *, fast, padding_side, shared_context=True):
        if fast:
            ids = [r.ids[: r.mask] for r in rendered]
            soft = [r.soft[: r.mask] for r in rendered]
            input_ids, soft_index, attention, offset = pack(ids, soft, self.pad_id, padding_side)
            read = offset + torch.tensor([len(s) for s in ids]) - 1
            return Rows(input_ids, soft_index, attention, len(rendered), read_pos=read,
                        word_ids=torch.tensor([w[0] for w in words]))
        if any(r.mask == 0 for r in rendered):
            raise TemplateError("the template starts with {mask} and this tokenizer adds no start token, so a causal LM has "
                                "nothing to predict the label word from", where="prompt.template",
                                fix="write something before {mask} (e.g. 'Answer: {mask} ...'), or a soft prompt {soft*8} in front of it")
        if shared_context:
            return self._shared_rows(rendered, words)
        ids, soft, tpos, tids = [], [], [], []
        for r in rendered:
            for w in words:
                i, s, p = fill_mask(r, w)
                ids.append(i)
                soft.append(s)
                tids.append(i[p:])
                tpos.append(list(range(p - 1, len(i) - 1)))
        return scored_rows(ids, soft, tpos, tids, len(rendered), self.pad_id, padding_side)

    def _shared_rows(self, rendered, words) -> Rows:
        """Each example's context (everything before the mask) once, then per word a continuation: the word after its
        first token and the template's tail. The words' first tokens are read at the context's last position."""
        ctx = [r.ids[: r.mask] for r in rendered]
        ctx_soft = [r.soft[: r.mask] for r in rendered]
        cont, cont_soft, tids = [], [], []
        for r in rendered:
            for w in words:
                i, s, p = fill_mask(r, w)
                cont.append(i[p:-1])  # what the model reads after the context ...
                cont_soft.append(s[p:-1])
                tids.append(i[p + 1:])  # ... to predict the rest of the word and the tail
        width = max((len(c) for c in cont), default=0)
        T = max(max((len(c) for c in ctx), default=0), width, 1)
        input_ids = torch.cat([pad(ctx, self.pad_id, "left", T), pad(cont, self.pad_id, "right", T)])
        soft_index = torch.cat([pad(ctx_soft, -1, "left", T), pad(cont_soft, -1, "right", T)])
        attention = torch.cat([pad([[1] * len(c) for c in ctx], 0, "left", T), pad([[1] * len(c) for c in cont], 0, "right", T)])
        return Rows(input_ids, soft_index, attention, len(rendered), word_ids=torch.tensor([w[0] for w in words]),
                    target_ids=pad(tids, -100, "right"), continuation_width=width)

    def word_scores(self, inputs, rows, past=None):
        if rows.continuation_width is not None:
            return self._shared_scores(inputs, rows)
        kw = dict(inputs, use_cache=False) if past is None else self._after(inputs, past)
        hidden = self.model.base_model(**kw).last_hidden_state
        at = torch.arange(hidden.shape[0], device=hidden.device)
        if rows.read_pos is not None:
            return self.label_rows(hidden[at, rows.read_pos], rows.word_ids)
        return self._general_scores(self.logits(hidden[at[:, None], rows.target_pos.clamp_min(0)]), rows)

    def label_rows(self, hidden: torch.Tensor, word_ids: torch.Tensor) -> torch.Tensor:
        """Only the label words' rows of the output layer, at the given hidden states (..., H) -> (..., W): the softmax
        normaliser at a position is shared by every word read there, so it cancels between classes."""
        head = self.model.get_output_embeddings()
        bias = getattr(head, "bias", None)
        return self._postprocess(F.linear(hidden, head.weight[word_ids], None if bias is None else bias[word_ids]).float())

    def _shared_scores(self, inputs: dict, rows: Rows) -> torch.Tensor:
        """Scores of the shared-context rows: the context runs once per example (its keys/values then serve every
        word's continuation), the first word tokens through their output rows only, the rest by log-likelihood.
        Scores are log-likelihoods up to one constant per example (the first position's normaliser). Where the model
        keeps no cache (gradient checkpointing while training), each context is repeated in front of its continuations
        instead: the same numbers at the cost of the one-row-per-word layout."""
        n, W, cw = rows.n_examples, rows.word_ids.shape[0], rows.continuation_width
        emb, att = inputs["inputs_embeds"], inputs["attention_mask"]
        pos = inputs.get("position_ids")
        ctx = dict(inputs_embeds=emb[:n], attention_mask=att[:n])
        if pos is not None:
            ctx["position_ids"] = pos[:n]
        if not cw:  # single-token words, a tail-less template: nothing follows the first tokens
            return self.label_rows(self.model.base_model(**ctx, use_cache=False).last_hidden_state[:, -1], rows.word_ids)
        start = (pos[:n, -1] + 1) if pos is not None else att[:n].sum(-1)  # where a continuation's positions begin
        out = self.model.base_model(**ctx, use_cache=True)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        if cache is None or cache.get_seq_length() != emb.shape[1]:  # gradient checkpointing while training leaves it empty
            return self._repeated_context_scores(emb, att, start, rows)
        scores = self.label_rows(out.last_hidden_state[:, -1], rows.word_ids)  # (n, W)
        cache.batch_repeat_interleave(W)
        cont_att = att[n:, :cw]
        kw = dict(inputs_embeds=emb[n:, :cw], attention_mask=torch.cat([att[:n].repeat_interleave(W, 0), cont_att], 1), use_cache=True)
        kw[_cache_kwarg(self.model.base_model)] = cache
        if self.takes_position_ids:
            kw["position_ids"] = start.repeat_interleave(W)[:, None] + (cont_att.cumsum(-1) - 1).clamp_min(0)
        hidden = self.model.base_model(**kw).last_hidden_state
        return scores + self._continuation_log_probs(hidden, rows).view(n, W)

    def _repeated_context_scores(self, emb, att, start, rows: Rows) -> torch.Tensor:
        n, W, cw = rows.n_examples, rows.word_ids.shape[0], rows.continuation_width
        T = emb.shape[1]
        full_att = torch.cat([att[:n].repeat_interleave(W, 0), att[n:, :cw]], 1)
        kw = dict(inputs_embeds=torch.cat([emb[:n].repeat_interleave(W, 0), emb[n:, :cw]], 1), attention_mask=full_att, use_cache=False)
        if self.takes_position_ids:
            first = (start - att[:n].sum(-1)).repeat_interleave(W)  # the context's first position (a prefix shifts it)
            kw["position_ids"] = first[:, None] + (full_att.cumsum(-1) - 1).clamp_min(0)
        hidden = self.model.base_model(**kw).last_hidden_state
        first_tokens = self.label_rows(hidden[:, T - 1], rows.word_ids).view(n, W, W).diagonal(dim1=1, dim2=2)
        return first_tokens + self._continuation_log_probs(hidden[:, T:], rows).view(n, W)

    def _continuation_log_probs(self, hidden: torch.Tensor, rows: Rows) -> torch.Tensor:
        """(n * W,) summed log-probs of ``rows.target_ids`` predicted at the continuation positions of ``hidden``."""
        tgt = rows.target_ids.to(hidden.device)  # as wide as the continuations: each row reads one token per target
        sel = tgt >= 0  # the output layer only where a target token is predicted
        lp = self.logits(hidden[sel]).float().log_softmax(-1)
        picked = lp.gather(-1, tgt[sel][:, None]).squeeze(-1)
        row = torch.arange(tgt.shape[0], device=hidden.device)[:, None].expand_as(sel)[sel]
        return torch.zeros(tgt.shape[0], dtype=picked.dtype, device=hidden.device).index_add(0, row, picked)

    def _after(self, inputs: dict, past: PromptCache) -> dict:
        """``inputs`` continuing each row's cached prefix: its keys/values as the past, its positions after it."""
        att = inputs["attention_mask"]
        plen = past.lengths.to(att.device)
        kw = dict(inputs_embeds=inputs["inputs_embeds"], position_ids=(plen[:, None] + att.cumsum(-1) - 1).clamp_min(0), use_cache=past.width > 0)
        if past.width == 0:
            return {**kw, "attention_mask": att}
        return {**kw, _cache_kwarg(self.model.base_model): self._cache_of(past), "attention_mask": torch.cat([past.mask(att), att], dim=1)}

    def generate_after(self, embeds: torch.Tensor, attention_mask: torch.Tensor, past: PromptCache, *, beams: int = 1) -> dict:
        """``generate()``'s inputs for left-padded rows that continue each row's cached prefix. transformers takes the
        whole sequence and skips what its cache already holds, so the cached positions are given as zero
        embeddings (never read) in front, and the positions come from the whole mask: 0..p-1 in the cache, p.. after.
        ``beams``: generate() repeats every input row per beam but not a cache it is given, so the cache comes repeated."""
        mask = torch.cat([past.mask(attention_mask), attention_mask], dim=1)
        full = torch.cat([embeds.new_zeros(embeds.shape[0], past.width, embeds.shape[2]), embeds], dim=1)
        return {**self.input_kwargs(full, mask), _cache_kwarg(self.model): self._cache_of(past, repeat=beams)}

    def _cache_of(self, past: PromptCache, *, repeat: int = 1):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for li, (k, v) in enumerate(past.layers):
            cache.update(k.repeat_interleave(repeat, 0) if repeat > 1 else k, v.repeat_interleave(repeat, 0) if repeat > 1 else v, li)
        return cache

    def prompt_kv(self, embeds):
        ids = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        out = self.model.base_model(inputs_embeds=embeds, attention_mask=ids,
                                    position_ids=torch.arange(embeds.shape[1], device=embeds.device)[None], use_cache=True)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        if cache is None or not hasattr(cache, "layers"):
            return None
        return [(layer.keys.detach().clone(), layer.values.detach().clone()) for layer in cache.layers]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output layer on the given hidden states only (a 49k-row vocabulary times every prompt position would
        dominate a step's memory), with the model's logit soft-capping."""
        return self._postprocess(self.model.get_output_embeddings()(hidden))

    def _postprocess(self, logits):
        cfg = self.model.config
        cfg = getattr(cfg, "text_config", None) or cfg
        cap = getattr(cfg, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    # ---- generation: one sequence [source][target][eos], the loss on the target positions ------------
    def target_batch(self, rendered, targets):
        ids = [r.ids + t for r, t in zip(rendered, targets)]
        soft = [r.soft + [-1] * len(t) for r, t in zip(rendered, targets)]
        labels = pad([[-100] * len(r.ids) + t for r, t in zip(rendered, targets)], -100, "right")
        return GenBatch(pad(ids, self.pad_id, "right"), pad(soft, -1, "right"), mask_of(ids, "right"), labels=labels,
                        n_targets=int((labels[:, 1:] != -100).sum()))

    def token_loss(self, inputs, batch):
        hidden = self.model.base_model(**inputs, use_cache=False).last_hidden_state
        labels = batch.labels[:, 1:]
        sel = labels != -100
        return self.cross_entropy(hidden[:, :-1][sel], labels[sel]), int(sel.sum())

    def cross_entropy(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy of the output layer at ``hidden`` (N, H) against ``labels`` (N,). Where N x vocabulary
        would pass ``CE_CHUNK`` logits, in chunks of positions whose logits are recomputed in backward instead of
        kept (a 262k-row vocabulary times every target position would otherwise dominate a step's memory)."""
        V = self.model.get_output_embeddings().weight.shape[0]
        step = max(1, CE_CHUNK // max(V, 1))

        def part(h, y):
            return F.cross_entropy(self.logits(h).float(), y, reduction="sum")

        if hidden.shape[0] <= step:
            return part(hidden, labels)
        grad = torch.is_grad_enabled() and hidden.requires_grad
        total = hidden.new_zeros((), dtype=torch.float32)
        for i in range(0, hidden.shape[0], step):
            h, y = hidden[i:i + step], labels[i:i + step]
            total = total + (checkpoint(part, h, y, use_reentrant=False) if grad else part(h, y))
        return total

    def generate_kwargs(self):
        return {"bos_token_id": self.tokenizer.bos_token_id}


def _cache_kwarg(model) -> str:
    """transformers 5.x renamed ``past_key_values`` to ``cache`` in some releases; use whichever forward takes."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
