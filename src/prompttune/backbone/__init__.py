"""Backbones: a pretrained model + tokenizer, its family, and the few operations the methods need.

Family differences stop in this file. Each family knows what goes in the mask slot, how the rendered
examples become model rows, and how the model's outputs become one score per label word:

- ``causal-lm``: the label word is the next token(s) after the prompt. With single-token words and nothing
  after the mask, one forward per example, reading only the label words' rows of the output layer.
  Otherwise each example's context runs once and every word continues it from its keys/values, scored by its
  log-likelihood from the mask to the end (the vocabulary computed only at the word's later tokens and the tail).
- ``masked-lm``: the mask slot becomes the model's mask token(s), scored by the MLM head.
- ``seq2seq``: the encoder sees the prompt with a sentinel in the mask slot, the decoder target is the word.
- ``encoder-head``: no label words; the prompt text and input go through a sequence-classification head.
- ``speech-seq2seq`` (Whisper): the clip at ``{audio}`` goes to the encoder; the prompt, mask and soft tokens are
  the decoder's, scored as a causal LM's (``speech.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ..errors import BackboneError
from .families import (FAMILIES, FAMILY_CLASSES, CausalLM, EncoderHead, Family, MaskedLM, Seq2Seq, SpeechSeq2Seq, family_of_config,
                       family_of_model)
from .loading import (DTYPES, SHIPPED_MODELS, WHAT_MODELS, ShippedModel, cache_root, check_model_source, converted_speech_copy,
                      dequantised_copy, drop_gguf_quantizer, first_line, loading_step, resolve)
from .rows import GenBatch, Rows, TensorBatch, pack, pad

# ------------------------------------------------------------------------------------------------
# The backbone
# ------------------------------------------------------------------------------------------------
_VOLATILE_CONFIG = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures", "id2label", "label2id",
                    "num_labels", "problem_type", "_attn_implementation_autoset", "_commit_hash", "use_cache", "pad_token_id"}


class Backbone:
    """A model, its tokenizer and its family."""

    def __init__(self, model, tokenizer, *, family: str | None = None, name: str | None = None, source: dict | None = None,
                 feature_extractor=None):
        """``feature_extractor``: a speech model's (default: Whisper's for its number of mel bins)."""
        family = family or family_of_model(model)
        if family not in FAMILY_CLASSES:
            raise BackboneError(f"unknown family {family!r}", fix=f"use one of {', '.join(FAMILIES)}")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self.source = source or {"name": self.name}
        fcls = FAMILY_CLASSES[family]
        self.family: Family = fcls(model, tokenizer, feature_extractor) if fcls.hears else fcls(model, tokenizer)

    # ---- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, name: str, *, family: str | None = None, num_labels: int | None = None, gguf_file: str | None = None,
             dtype: str = "float32", revision: str | None = None, trust_remote_code: bool = False,
             task_head: bool = False) -> "Backbone":
        """Load from a short name (``smollm2-135m``), a hub id, a local directory or a ``.gguf`` file. ``task_head``:
        when no family is given, load the model with a classification head (what a method that trains one needs)."""
        import transformers

        name = os.fspath(name) if isinstance(name, os.PathLike) else name
        if not isinstance(name, str) or not name.strip():
            raise BackboneError(f"no model given (model name {name!r})", where="model.name", fix=WHAT_MODELS)
        torch_dtype = getattr(torch, dtype, None) if dtype in DTYPES else None
        if not isinstance(torch_dtype, torch.dtype):
            raise BackboneError(f"unknown dtype {dtype!r}", where="model.dtype", fix="use float32, bfloat16 or float16")
        path, gguf, default_family = resolve(name, gguf_file)
        if SHIPPED_MODELS.get(name) and SHIPPED_MODELS[name].ct2_parts:
            path = str(loading_step(name, "CTranslate2 weights", lambda: converted_speech_copy(name, torch_dtype)))
        elif gguf:
            path = str(loading_step(name, "GGUF file", lambda: dequantised_copy(path, gguf, torch_dtype)))
        else:
            check_model_source(name, path)
        kw = dict(revision=revision, trust_remote_code=trust_remote_code)
        try:
            config = transformers.AutoConfig.from_pretrained(path, **kw)
        except OSError as e:
            if Path(path).is_dir():
                raise BackboneError(f"cannot read the config.json of model {name!r} ({first_line(e)})", where=str(Path(path) / "config.json"),
                                    fix="restore config.json as save_pretrained wrote it (valid JSON with a model_type)") from None
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            raise BackboneError(f"cannot load model {name!r}: it is not a local directory or file, and "
                                + ("HF_HUB_OFFLINE=1 is set, so the hub is not asked" if offline else f"the hub answered: {first_line(e)}"),
                                fix=("only local files work offline: " if offline else "") + WHAT_MODELS) from None
        except Exception as e:  # e.g. ValueError: an unknown model_type, remote code refused
            raise BackboneError(f"cannot use the config of model {name!r} ({first_line(e)})", where=str(path),
                                fix="check its config.json (model_type must be one this transformers knows: upgrade transformers, "
                                    "or set model.trust_remote_code: true for a model that ships its own code and that you trust)") from None
        if task_head and not family:
            family = next(c.name for c in FAMILY_CLASSES.values() if c.has_task_head)
        family = family or default_family or family_of_config(config)
        if family not in FAMILY_CLASSES:
            raise BackboneError(f"unknown family {family!r}", fix=f"use one of {', '.join(FAMILIES)}")
        fcls = FAMILY_CLASSES[family]
        auto = getattr(transformers, fcls.auto_class)
        extra = {}
        if fcls.has_task_head:
            if num_labels is None:
                raise BackboneError("an encoder + head backbone needs the number of labels", fix="pass num_labels")
            # A checkpoint whose head has another number of labels gets a fresh head of the right size (what
            # fine-tuning a classifier on a new label set needs); its encoder is loaded as it is.
            extra.update(num_labels=num_labels, ignore_mismatched_sizes=True)
        tokenizer = loading_step(name, "tokenizer", lambda: transformers.AutoTokenizer.from_pretrained(path, **kw),
                             fix="the model directory needs the tokenizer files that tokenizer.save_pretrained writes "
                                 "(tokenizer.json or vocabulary files, tokenizer_config.json)")
        model, info = loading_step(name, "weights", lambda: auto.from_pretrained(path, dtype=torch_dtype, output_loading_info=True, **kw, **extra),
                               fix="the weights file may be truncated or corrupt: copy or download the model again, or save it "
                                   "again with save_pretrained")
        drop_gguf_quantizer(model)  # a dequantised copy written by an older prompttune may still say "gguf"
        missing = [k for k in info.get("missing_keys", []) if "classifier" not in k and "score" not in k]
        if fcls is MaskedLM and missing:
            raise BackboneError(f"{name!r} has no masked-LM head (missing weights such as {missing[0]}), so mask-filling with it is meaningless",
                                fix="use method head-finetune (encoder + classification head) with this model, or a checkpoint with its MLM head")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        features = None
        if fcls.hears:
            features = loading_step(name, "feature extractor", lambda: transformers.AutoFeatureExtractor.from_pretrained(path, **kw),
                                    fix="the model directory needs preprocessor_config.json (what WhisperFeatureExtractor.save_pretrained writes)")
        source = {"name": name, "family": family, "dtype": dtype, "revision": revision}
        return cls(model, tokenizer, family=family, name=name, source=source, feature_extractor=features)

    def is_family(self, name: str | None) -> bool:
        """Whether this backbone is loaded as the family ``name`` (as an artifact records it)."""
        return name == self.family.name

    # ---- operations the methods need --------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().weight.shape[1]

    def embed(self, input_ids: torch.Tensor, soft_index: torch.Tensor | None = None, table: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings of ``input_ids``; where ``soft_index`` >= 0, that row of ``table`` (soft tokens) instead."""
        embeds = self.model.get_input_embeddings()(input_ids)
        if table is not None and soft_index is not None:
            table = table.to(device=embeds.device, dtype=embeds.dtype)
            embeds = torch.where((soft_index >= 0)[..., None], table[soft_index.clamp_min(0)], embeds)
        return embeds

    def inputs(self, embeds: torch.Tensor, attention_mask: torch.Tensor, *, prefix=None, batch=None) -> dict:
        """The model's keyword arguments for input embeddings, with ``prefix`` (keys/values in front of every
        attention layer, or None) put in place for the next forward: what every method's ``model_inputs`` returns.
        ``batch``: the rows the embeddings come from (a speech family adds their audio features)."""
        self.set_prefix(prefix)
        length = prefix[0][0].shape[-2] if prefix else 0
        return self.family.input_kwargs(embeds, attention_mask, prefix_length=length, batch=batch)

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
        from ..prefix_attention import PrefixInjector

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



__all__ = ["Backbone", "CausalLM", "EncoderHead", "FAMILIES", "FAMILY_CLASSES", "Family", "GenBatch", "MaskedLM", "Rows",
           "SHIPPED_MODELS", "Seq2Seq", "ShippedModel", "SpeechSeq2Seq", "TensorBatch", "cache_root", "converted_speech_copy", "pack", "pad", "resolve"]
