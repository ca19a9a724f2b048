"""The model families. Each knows what goes in the mask slot, how rendered examples become model rows, how the
model's outputs become one score per label word, and (for the families that generate) how a source and a target
become a teacher-forced batch and how ``generate`` is called. Nothing above this package asks a family's name."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..errors import BackboneError
from ..schemas import FAMILIES
from ..template import Rendered, fill_mask
from .rows import GenBatch, Rows, mask_of, pack, pad, scored_rows



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
    def build(self, rendered: list[Rendered], words: list[list[int]], *, fast: bool, padding_side: str) -> Rows:
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

    def _scores_from_logits(self, logits: torch.Tensor, rows: Rows) -> torch.Tensor:
        if rows.read_pos is not None:
            at = logits[torch.arange(logits.shape[0], device=logits.device), rows.read_pos]
            return at[:, rows.word_ids].float()
        return self._general_scores(logits, rows)

    def _general_scores(self, logits: torch.Tensor, rows: Rows, *, gathered: bool = False) -> torch.Tensor:
        """Sum of target-token log-probs per row, reshaped to (n_examples, W). ``logits`` is (R, T, V), or
        (R, L, V) already taken at the target positions when ``gathered``."""
        tgt = rows.target_ids
        if not gathered:
            logits = logits[torch.arange(logits.shape[0], device=logits.device)[:, None], rows.target_pos.clamp_min(0)]
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

    def build(self, rendered, words, *, fast, padding_side):
        if fast:
            ids = [r.ids[: r.mask] for r in rendered]
            soft = [r.soft[: r.mask] for r in rendered]
            input_ids, soft_index, attention, offset = pack(ids, soft, self.pad_id, padding_side)
            read = offset + torch.tensor([len(s) for s in ids]) - 1
            return Rows(input_ids, soft_index, attention, len(rendered), read_pos=read,
                        word_ids=torch.tensor([w[0] for w in words]))
        ids, soft, tpos, tids = [], [], [], []
        for r in rendered:
            for w in words:
                i, s, p = fill_mask(r, w)
                ids.append(i)
                soft.append(s)
                tids.append(i[p:])
                tpos.append(list(range(p - 1, len(i) - 1)))
        return scored_rows(ids, soft, tpos, tids, len(rendered), self.pad_id, padding_side)

    def word_scores(self, inputs, rows, past=None):
        kw = dict(inputs, use_cache=False) if past is None else self._after(inputs, past)
        hidden = self.model.base_model(**kw).last_hidden_state
        at = torch.arange(hidden.shape[0], device=hidden.device)
        if rows.read_pos is not None:
            # Read only the label words' rows of the output layer at one position per example:
            # the softmax normaliser is shared by all words of a row and cancels between classes.
            head = self.model.get_output_embeddings()
            bias = getattr(head, "bias", None)
            logits = F.linear(hidden[at, rows.read_pos], head.weight[rows.word_ids], None if bias is None else bias[rows.word_ids])
            return self._postprocess(logits.float())
        return self._general_scores(self.logits(hidden[at[:, None], rows.target_pos.clamp_min(0)]), rows, gathered=True)

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
        return F.cross_entropy(self.logits(hidden[:, :-1][sel]).float(), labels[sel], reduction="sum"), int(sel.sum())

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

    def build(self, rendered, words, *, fast, padding_side):
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
        return self._scores_from_logits(self.model(**inputs).logits, rows)


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

    def build(self, rendered, words, *, fast, padding_side):
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
        logits = self.model(**inputs, decoder_input_ids=rows.decoder_input_ids, decoder_attention_mask=rows.decoder_attention_mask,
                            use_cache=False).logits
        return self._scores_from_logits(logits, rows)

    # ---- generation: the source to the encoder; the decoder reads [start][target], predicts [target][eos] ----
    def target_batch(self, rendered, targets):
        ids = [r.ids for r in rendered]
        dec = [[self.start_id] + t[:-1] for t in targets]
        labels = pad(targets, -100, "right")
        return GenBatch(pad(ids, self.pad_id, "right"), pad([r.soft for r in rendered], -1, "right"), mask_of(ids, "right"),
                        labels=labels, decoder_input_ids=pad(dec, self.pad_id, "right"), decoder_attention_mask=mask_of(dec, "right"),
                        n_targets=int((labels != -100).sum()))

    def token_loss(self, inputs, batch):
        logits = self.model(**inputs, decoder_input_ids=batch.decoder_input_ids, decoder_attention_mask=batch.decoder_attention_mask,
                            use_cache=False).logits
        sel = batch.labels != -100
        return F.cross_entropy(logits[sel].float(), batch.labels[sel], reduction="sum"), int(sel.sum())

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

    def build(self, rendered, words, *, fast, padding_side):
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

