"""The model families other than causal LM (``causal.py``), the registry of all of them, and how a model or a config
tells its family. The interface every family answers is ``family.Family``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import BackboneError
from ..schemas import FAMILIES
from ..template import fill_mask
from .rows import GenBatch, Rows, mask_of, pack, pad, scored_rows
from .causal import CausalLM
from .family import Family, PromptCache
from .speech import SpeechSeq2Seq, is_speech_model

__all__ = ["CausalLM", "EncoderHead", "Family", "MaskedLM", "PromptCache", "Seq2Seq", "SpeechSeq2Seq", "FAMILY_CLASSES"]


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


FAMILY_CLASSES: dict[str, type[Family]] = {c.name: c for c in (CausalLM, MaskedLM, Seq2Seq, EncoderHead, SpeechSeq2Seq)}


def family_of_model(model) -> str:
    cls = type(model).__name__
    if cls.endswith("ForSequenceClassification"):
        return "encoder-head"
    if is_speech_model(model):
        return "speech-seq2seq"
    if getattr(model.config, "is_encoder_decoder", False):
        return "seq2seq"
    if cls.endswith("ForMaskedLM"):
        return "masked-lm"
    if cls.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")):
        return "causal-lm"
    raise BackboneError(f"cannot tell the family of {cls}", fix=f"pass family= one of {', '.join(FAMILIES)}")


def family_of_config(config) -> str:
    if is_speech_model(config):
        return "speech-seq2seq"
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

