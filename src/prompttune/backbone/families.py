"""The model families. Each knows what goes in the mask slot, how rendered examples become model rows, how the
model's outputs become one score per label word, and (for the families that generate) how a source and a target
become a teacher-forced batch and how ``generate`` is called. Nothing above this package asks a family's name."""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..errors import BackboneError, TemplateError
from ..schemas import FAMILIES
from ..template import Rendered, fill_mask
from .rows import GenBatch, Rows, mask_of, pack, pad, scored_rows



CE_CHUNK = 1 << 24  # logits (16M floats, 64 MB) above which the token loss is computed in chunks of positions


@dataclass
class PromptCache:
    """Past keys/values for a batch's rows: per attention layer (R, heads, P, head_dim), each row's own prefix
    right-aligned in the P positions (``lengths[r]`` of them real, the rest masked out)."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    lengths: torch.Tensor  # (R,)


class Family:
    """What differs between model families. Capabilities are class attributes that callers ask, never the name."""

    name: ClassVar[str]
    auto_class: ClassVar[str]
    uses_verbalizer: ClassVar[bool] = True  # scores label words at a mask (else: a classification head's logits)
    has_task_head: ClassVar[bool] = False  # carries a classification head of its own (trained with the prompt)
    generates: ClassVar[bool] = False  # can generate text (summarization, translation)
    caches_prompt: ClassVar[bool] = False  # can score rows after past keys/values (a server's prompt cache)
    # a prefix in every attention layer: does the input continue its positions (as after a cache of that length)?
    prefix_shifts_positions: ClassVar[bool] = False
    peft_task_type: ClassVar[str | None] = None  # where PEFT's prompt-learning adapters put the prompt the same way
    source_padding_side: ClassVar[str] = "left"  # of generation sources, so every row's next token is at the right edge
    generated_from: ClassVar[int] = 0  # where generated tokens start in a row of generate()'s output
    target_takes_trailing_space: ClassVar[bool] = False  # "Headline: " + "words" is written "Headline:" + " words"

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        params = inspect.signature(model.forward).parameters
        self.takes_position_ids = "position_ids" in params

    # what the renderer writes into the mask slot (one token)
    def placeholder_id(self) -> int:
        return self.pad_id

    def leading_space(self) -> bool:
        return True

    def reserve(self, words: list[list[int]]) -> int:
        """Extra tokens to keep free in the encoder input for the longest label word."""
        return max(len(w) for w in words) - 1

    def fast_ok(self, words: list[list[int]], template_tail_empty: bool) -> bool:
        return all(len(w) == 1 for w in words)

    def input_kwargs(self, embeds: torch.Tensor, attention_mask: torch.Tensor, *, prefix_length: int = 0) -> dict:
        """The model's keyword arguments for input embeddings; positions continue after a prefix of ``prefix_length``
        keys/values where this family's positions do (``prefix_shifts_positions``)."""
        kw = dict(inputs_embeds=embeds, attention_mask=attention_mask)
        if self.takes_position_ids:
            shift = prefix_length if self.prefix_shifts_positions else 0
            kw["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp_min(0) + shift
        return kw

    # ---- classification ------------------------------------------------------------------------
    def build(self, rendered: list[Rendered], words: list[list[int]], *, fast: bool, padding_side: str,
              shared_context: bool = True) -> Rows:
        """Model rows for ``rendered`` examples and label ``words``. ``fast``: single-token words read at one
        position. Otherwise one row per (example, word) is scored by likelihood; where ``shared_context`` and the
        family can, the part every word of an example shares is run once (a server merging rows of several prompts
        asks for one row per (example, word) instead)."""
        raise NotImplementedError

    def word_scores(self, inputs: dict, rows: Rows, past: PromptCache | None = None) -> torch.Tensor:
        """(n_examples, W) scores from the model's ``inputs`` (:meth:`input_kwargs`, as a method's ``model_inputs``
        returns them); in the fast path, logits up to a per-row constant. ``past``: see ``caches_prompt``."""
        raise NotImplementedError

    def prompt_kv(self, embeds: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Per attention layer, the keys/values of a prompt prefix (1, P, hidden) run alone, to reuse as ``past``."""
        return None

    # ---- generation ----------------------------------------------------------------------------
    def _no_generation(self):
        return BackboneError(f"a {self.name} model does not generate text", where="model.family",
                             fix="use a causal-lm (e.g. smollm2-135m) or a seq2seq model (T5, BART) for generation")

    def target_batch(self, rendered: list[Rendered], targets: list[list[int]]) -> GenBatch:
        """Teacher-forced rows: sources and targets, right-padded, the loss only on target tokens."""
        raise self._no_generation()

    def source_batch(self, rendered: list[Rendered]) -> GenBatch:
        """Sources only, padded on ``source_padding_side``, for ``generate``."""
        ids = [r.ids for r in rendered]
        side = self.source_padding_side
        return GenBatch(pad(ids, self.pad_id, side), pad([r.soft for r in rendered], -1, side), mask_of(ids, side))

    def token_loss(self, inputs: dict, batch: GenBatch) -> tuple[torch.Tensor, int]:
        """(sum of target-token cross-entropies, number of target tokens)."""
        raise self._no_generation()

    def generate_kwargs(self) -> dict:
        """The special tokens transformers' ``GenerationConfig`` needs for this family."""
        raise self._no_generation()

    # ---- shared helpers ----
    def probe(self, ids: torch.Tensor):
        """Run the model on token ids (1, T) alone; used to find attention layers and to read their keys/values."""
        return self.model(input_ids=ids, attention_mask=torch.ones_like(ids))

    @contextmanager
    def output_layer_at(self, index):
        """While inside, the model's output layer (``get_output_embeddings``) computes only at ``hidden[index]``:
        the logits a forward returns are those positions' only. A forward pre-hook, removed on exit; what the model
        does after the layer (a bias such as BART's, soft-capping) applies unchanged."""
        head = self.model.get_output_embeddings()
        handle = head.register_forward_pre_hook(lambda module, args: (args[0][index], *args[1:]))
        try:
            yield
        finally:
            handle.remove()

    def _read_index(self, rows: Rows, device) -> tuple:
        """Where the output layer is needed: the read position of each row (fast) or its target positions."""
        ar = torch.arange(rows.input_ids.shape[0], device=device)
        if rows.read_pos is not None:
            return ar, rows.read_pos.to(device)
        return ar[:, None], rows.target_pos.clamp_min(0).to(device)

    def _scores_at(self, logits: torch.Tensor, rows: Rows) -> torch.Tensor:
        """Scores from logits taken at :meth:`_read_index` (R, V) or (R, L, V)."""
        if rows.read_pos is not None:
            return logits[:, rows.word_ids].float()
        return self._general_scores(logits, rows)

    def _general_scores(self, logits: torch.Tensor, rows: Rows) -> torch.Tensor:
        """Sum of target-token log-probs per row, reshaped to (n_examples, W); ``logits`` (R, L, V) are taken at the
        rows' target positions."""
        tgt = rows.target_ids
        logp = logits.float().log_softmax(-1)
        lp = logp.gather(-1, tgt.clamp_min(0)[..., None]).squeeze(-1).masked_fill(tgt < 0, 0.0)
        return lp.sum(-1).view(rows.n_examples, -1)


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
        from transformers import DynamicCache

        att = inputs["attention_mask"]
        P = max((k.shape[2] for k, _ in past.layers), default=0)
        plen = past.lengths.to(att.device)
        kw = dict(inputs_embeds=inputs["inputs_embeds"], position_ids=(plen[:, None] + att.cumsum(-1) - 1).clamp_min(0), use_cache=P > 0)
        if P == 0:
            return {**kw, "attention_mask": att}
        cache = DynamicCache(config=self.model.config)
        for li, (k, v) in enumerate(past.layers):
            cache.update(k, v, li)
        prefix_mask = (torch.arange(P, device=att.device)[None, :] >= (P - plen)[:, None]).to(att.dtype)
        return {**kw, _cache_kwarg(self.model.base_model): cache, "attention_mask": torch.cat([prefix_mask, att], dim=1)}

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


class MaskedLM(Family):
    name = "masked-lm"
    auto_class = "AutoModelForMaskedLM"

    def placeholder_id(self):
        if self.tokenizer.mask_token_id is None:
            raise BackboneError("the tokenizer has no mask token, so it cannot be used as a masked LM",
                                fix="pick family causal-lm or encoder-head for this model")
        return self.tokenizer.mask_token_id

    def leading_space(self):
        # WordPiece ignores it; for RoBERTa-style BPE the space marks a word start, as in prose.
        return True

    def build(self, rendered, words, *, fast, padding_side, shared_context=True):
        if fast:
            input_ids, soft_index, attention, offset = pack([r.ids for r in rendered], [r.soft for r in rendered], self.pad_id, padding_side)
            read = offset + torch.tensor([r.mask for r in rendered])
            return Rows(input_ids, soft_index, attention, len(rendered), read_pos=read, word_ids=torch.tensor([w[0] for w in words]))
        mask_id = self.placeholder_id()
        ids, soft, tpos, tids = [], [], [], []
        for r in rendered:
            for w in words:
                i, s, p = fill_mask(r, [mask_id] * len(w))
                ids.append(i)
                soft.append(s)
                tids.append(list(w))
                tpos.append(list(range(p, p + len(w))))
        return scored_rows(ids, soft, tpos, tids, len(rendered), self.pad_id, padding_side)

    def word_scores(self, inputs, rows, past=None):
        # the MLM head's transform runs at every position (hidden x hidden); its vocabulary-sized layer only at the masks
        with self.output_layer_at(self._read_index(rows, inputs["inputs_embeds"].device)):
            return self._scores_at(self.model(**inputs).logits, rows)


class Seq2Seq(Family):
    name = "seq2seq"
    auto_class = "AutoModelForSeq2SeqLM"
    generates = True
    source_padding_side = "right"  # the encoder reads the whole source; the decoder starts on its own
    generated_from = 1  # a decoder's output starts with its start token

    def __init__(self, model, tokenizer):
        super().__init__(model, tokenizer)
        self.takes_position_ids = False
        vocab = tokenizer.get_vocab()
        self.sentinel = vocab.get("<extra_id_0>")  # T5-style span corruption
        self.start_id = model.config.decoder_start_token_id
        if self.start_id is None:
            self.start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else self.pad_id

    def placeholder_id(self):
        if self.sentinel is not None:
            return self.sentinel
        if self.tokenizer.mask_token_id is not None:
            return self.tokenizer.mask_token_id
        return self.pad_id

    def reserve(self, words):
        return 0

    def probe(self, ids):
        return self.model(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=ids)

    def build(self, rendered, words, *, fast, padding_side, shared_context=True):
        prefix = [self.start_id] + ([self.sentinel] if self.sentinel is not None else [])
        if fast:
            input_ids, soft_index, attention, _ = pack([r.ids for r in rendered], [r.soft for r in rendered], self.pad_id, padding_side)
            dec = torch.tensor([prefix] * len(rendered))
            return Rows(input_ids, soft_index, attention, len(rendered), read_pos=torch.full((len(rendered),), len(prefix) - 1),
                        word_ids=torch.tensor([w[0] for w in words]), decoder_input_ids=dec, decoder_attention_mask=torch.ones_like(dec))
        ids, soft, dec, tpos, tids = [], [], [], [], []
        for r in rendered:
            for w in words:
                ids.append(r.ids)
                soft.append(r.soft)
                d = prefix + list(w)
                dec.append(d[:-1])
                tids.append(list(w))
                tpos.append(list(range(len(prefix) - 1, len(d) - 1)))
        input_ids, soft_index, attention, _ = pack(ids, soft, self.pad_id, padding_side)
        dec_t, _, dec_att, _ = pack(dec, dec, self.pad_id, "right")
        return Rows(input_ids, soft_index, attention, len(rendered), target_pos=pad(tpos, -1, "right"),
                    target_ids=pad(tids, -100, "right"), decoder_input_ids=dec_t, decoder_attention_mask=dec_att)

    def word_scores(self, inputs, rows, past=None):
        with self.output_layer_at(self._read_index(rows, inputs["inputs_embeds"].device)):
            logits = self.model(**inputs, decoder_input_ids=rows.decoder_input_ids, decoder_attention_mask=rows.decoder_attention_mask,
                                use_cache=False).logits
        return self._scores_at(logits, rows)

    # ---- generation: the source to the encoder; the decoder reads [start][target], predicts [target][eos] ----
    def target_batch(self, rendered, targets):
        ids = [r.ids for r in rendered]
        dec = [[self.start_id] + t[:-1] for t in targets]
        labels = pad(targets, -100, "right")
        return GenBatch(pad(ids, self.pad_id, "right"), pad([r.soft for r in rendered], -1, "right"), mask_of(ids, "right"),
                        labels=labels, decoder_input_ids=pad(dec, self.pad_id, "right"), decoder_attention_mask=mask_of(dec, "right"),
                        n_targets=int((labels != -100).sum()))

    def token_loss(self, inputs, batch):
        sel = batch.labels != -100
        with self.output_layer_at(sel):  # the vocabulary only at target positions, not at the decoder's padding
            logits = self.model(**inputs, decoder_input_ids=batch.decoder_input_ids, decoder_attention_mask=batch.decoder_attention_mask,
                                use_cache=False).logits
        return F.cross_entropy(logits.float(), batch.labels[sel], reduction="sum"), int(sel.sum())

    def generate_kwargs(self):
        return {"decoder_start_token_id": self.start_id}


class EncoderHead(Family):
    name = "encoder-head"
    auto_class = "AutoModelForSequenceClassification"
    uses_verbalizer = False
    has_task_head = True

    def __init__(self, model, tokenizer):
        super().__init__(model, tokenizer)
        from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

        # Encoder heads pool the first token ([CLS]); decoder heads read the last one. Padding must not land there,
        # so this family picks its own side whatever the user's padding_side.
        self.side = "right" if model.config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "left"

    def reserve(self, words):
        return 0

    def build(self, rendered, words, *, fast, padding_side, shared_context=True):
        input_ids, soft_index, attention, _ = pack([r.ids for r in rendered], [r.soft for r in rendered], self.pad_id, self.side)
        return Rows(input_ids, soft_index, attention, len(rendered))

    def word_scores(self, inputs, rows, past=None):
        return self.model(**inputs).logits.float()


FAMILY_CLASSES: dict[str, type[Family]] = {c.name: c for c in (CausalLM, MaskedLM, Seq2Seq, EncoderHead)}


def family_of_model(model) -> str:
    cls = type(model).__name__
    if cls.endswith("ForSequenceClassification"):
        return "encoder-head"
    if getattr(model.config, "is_encoder_decoder", False):
        return "seq2seq"
    if cls.endswith("ForMaskedLM"):
        return "masked-lm"
    if cls.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")):
        return "causal-lm"
    raise BackboneError(f"cannot tell the family of {cls}", fix=f"pass family= one of {', '.join(FAMILIES)}")


def family_of_config(config) -> str:
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    archs = " ".join(getattr(config, "architectures", None) or [])
    if "ForMaskedLM" in archs or "ForPreTraining" in archs:
        return "masked-lm"
    if "ForCausalLM" in archs or "LMHeadModel" in archs:
        return "causal-lm"
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "masked-lm"
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "causal-lm"
    return "encoder-head"

