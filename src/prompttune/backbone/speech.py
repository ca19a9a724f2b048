"""The speech encoder-decoder family (Whisper): the clip goes to the encoder as log-mel features, and the whole
prompt lives in the decoder, where Whisper keeps its own.

A template places the clip with ``{audio}``; it renders as Whisper's start-of-transcript sequence
(``<|startoftranscript|>`` [``<|en|><|transcribe|>`` on a multilingual model] ``<|notimestamps|>``). Whatever the
template has before ``{audio}`` is Whisper's previous-text prompt (``<|startofprev|>`` is put in front); whatever
follows is the start of what is said. So

- ``{soft*16}{audio}`` -> a transcription: soft tokens in the prompt position, the transcript generated after them;
- ``{audio}{soft*16} The speaker sounds {mask}.`` -> classification: label words scored in the decoder.

From the decoder's side the rows are a causal LM's (this family is ``CausalLM`` with an encoder in front): the
fast path reads single-token words at one position, other words are scored by likelihood, the generation loss reads
the output layer at target positions only. Each example's encoder output is computed once per batch (not once per
label word), and, while the encoder is frozen, kept across batches for clips heard before (a soft prompt trains
epochs on the same few clips). Prefix tuning puts its keys and values in the decoder's self-attention only
(``probe`` runs the decoder alone), so a frozen encoder's outputs never change.

``generate`` is transformers' ``GenerationMixin.generate`` (greedy, beams, sampling, the KV cache) on the encoder's
outputs, with the method's decoder-prompt embeddings put in at the first step; Whisper's own long-form ``generate``
(30 s windows, language detection) is not used: a clip is at most 30 s here.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..data.speech import SAMPLE_RATE, audio_libraries
from ..errors import DataError, TemplateError
from ..template import AUDIO_FIELD, Field, Text
from .causal import CausalLM
from .rows import GenBatch

SILENCE = np.zeros(SAMPLE_RATE, dtype=np.float32)  # one second: the content-free clip of calibration
CACHE_BYTES = 256 << 20  # each of the two per-clip caches (log-mel features, encoder outputs)


class _ClipCache:
    """Tensors per key, least recently used dropped first once they pass ``CACHE_BYTES``."""

    def __init__(self):
        self.items: OrderedDict = OrderedDict()
        self.bytes = 0

    def get(self, key):
        hit = self.items.get(key)
        if hit is not None:
            self.items.move_to_end(key)
        return hit

    def put(self, key, value: torch.Tensor) -> None:
        if key in self.items:
            return
        self.items[key] = value
        self.bytes += value.numel() * value.element_size()
        while self.bytes > CACHE_BYTES and len(self.items) > 1:
            _, old = self.items.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()


def read_audio(value, where: str) -> np.ndarray:
    """A mono float32 waveform at 16 kHz from a ``.wav``/``.flac`` path, an array (taken as 16 kHz), or a
    ``datasets`` Audio value (``{"array": ..., "sampling_rate": ...}``)."""
    rate = SAMPLE_RATE
    if isinstance(value, dict):
        rate = int(value.get("sampling_rate") or SAMPLE_RATE)
        value = value["array"] if value.get("array") is not None else value.get("path")
    if isinstance(value, (str, Path)):
        soundfile, _ = audio_libraries()
        path = Path(value).expanduser()
        if not path.is_file():
            raise DataError(f"the audio file {str(value)[:200]!r} does not exist", where=where,
                            fix="give a .wav or .flac path that exists (absolute, or relative to where prompttune runs)")
        try:
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        except Exception as e:  # soundfile.LibsndfileError and friends
            raise DataError(f"cannot read the audio file {path} ({str(e).splitlines()[0][:200]})", where=where,
                            fix="give a .wav or .flac file (soundfile reads what libsndfile does)") from None
        data = data.mean(axis=1)
    else:
        try:
            data = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=np.float32)
        except (TypeError, ValueError):
            raise DataError(f"the audio value is a {type(value).__name__}, not a path or an array", where=where,
                            fix="give a .wav/.flac path, a 1-D array of samples at 16 kHz, or a datasets Audio value") from None
        if data.ndim == 2:
            data = data.mean(axis=0 if data.shape[0] < data.shape[1] else 1)
        if data.ndim != 1 or data.size == 0 or not np.isfinite(data).all():
            raise DataError(f"the audio array has shape {list(data.shape)}{'' if data.size else ' (empty)'} or values that are "
                            "not finite", where=where, fix="give a 1-D array of finite samples (mono, 16 kHz)")
    if rate != SAMPLE_RATE:
        _, soxr = audio_libraries()
        data = soxr.resample(data, rate, SAMPLE_RATE).astype(np.float32)
    return data


def _audio_key(value) -> str:
    if isinstance(value, (str, Path)):
        return "path:" + str(value)
    if isinstance(value, dict):
        if value.get("array") is None:
            return "path:" + str(value.get("path"))
        value = value["array"]
    arr = np.ascontiguousarray(np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=np.float32))
    return "array:" + hashlib.sha1(arr.tobytes()).hexdigest()


class SpeechSeq2Seq(CausalLM):
    name = "speech-seq2seq"
    auto_class = "AutoModelForSpeechSeq2Seq"
    hears = True
    caches_prompt = False  # a server's prompt cache holds text-only prefixes
    prefix_shifts_positions = False
    peft_task_type = None
    lora_targets = ("q_proj", "v_proj")  # as PEFT's Whisper fine-tuning guide has it (PEFT keeps no default for whisper)
    source_padding_side = "left"
    language = "en"  # the language token of a multilingual model's start-of-transcript sequence

    def __init__(self, model, tokenizer, feature_extractor=None):
        super().__init__(model, tokenizer)
        from transformers import WhisperFeatureExtractor

        self.feature_extractor = feature_extractor or WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
        self.takes_position_ids = True
        vocab = tokenizer.get_vocab()
        self.sot_id = vocab.get("<|startoftranscript|>", model.config.decoder_start_token_id)
        self.prev_id = vocab.get("<|startofprev|>")
        self._features, self._encoded = _ClipCache(), _ClipCache()

    # ---- the prompt --------------------------------------------------------------------------
    def start_of_transcript(self, language: str | None = None, task: str = "transcribe") -> list[int]:
        """``<|startoftranscript|>`` [language, task] ``<|notimestamps|>``, as Whisper writes it. ``language`` (default
        English) and ``task`` (transcribe, or translate into English) are a multilingual model's; an English-only one
        takes neither."""
        vocab = self.tokenizer.get_vocab()
        ids = [self.sot_id]
        gc = getattr(self.model, "generation_config", None)
        if getattr(gc, "is_multilingual", False) or getattr(gc, "lang_to_id", None):
            lang = vocab.get(f"<|{language or self.language}|>")
            if lang is None:
                known = sorted(k[2:-2] for k in (getattr(gc, "lang_to_id", None) or {}))
                raise TemplateError(f"{self.model.name_or_path or 'this model'} has no language {language!r}", where="prompt.template",
                                    fix="use one of its Whisper language codes in {audio:<language>}: " + ", ".join(known[:30]))
            ids += [lang, vocab[f"<|{task}|>"]] if f"<|{task}|>" in vocab else [lang]
        elif (language or "en") != "en" or task != "transcribe":
            raise TemplateError(f"{{audio:{language} {task}}} asks an English-only model for another language or task",
                                where="prompt.template", fix="drop the option, or use a multilingual model such as whisper-base")
        if "<|notimestamps|>" in vocab:
            ids.append(vocab["<|notimestamps|>"])
        return ids

    def renderer_options(self, template) -> dict:
        n = sum(isinstance(s, Field) and s.name == AUDIO_FIELD for s in template.segments)
        if n != 1:
            raise TemplateError(f"a speech model hears the clip at {{{AUDIO_FIELD}}}; the template {template.text!r} has "
                                f"{'none' if n == 0 else f'{n} of them'}", where="prompt.template",
                                fix="place {audio} once, e.g. '{audio}{soft*16} The speaker sounds {mask}.' (classification) "
                                    "or '{soft*16}{audio}' (transcription); its column holds a .wav/.flac path")
        first = next(s for s in template.segments if not (isinstance(s, Text) and not s.text))
        before = not (isinstance(first, Field) and first.name == AUDIO_FIELD)
        prefix = [self.prev_id] if before and self.prev_id is not None else []
        option = next(s.option for s in template.segments if isinstance(s, Field) and s.name == AUDIO_FIELD)
        language, _, task = (option or "").partition(" ")
        return {"audio_ids": self.start_of_transcript(language or None, task or "transcribe"), "specials": (prefix, [])}

    def content_free_audio(self):
        return SILENCE

    def served_audio(self, text: str, where: str) -> np.ndarray:
        """A clip sent to the server: a sound file's bytes (WAV, FLAC, OGG) in base64, optionally as a ``data:`` URL,
        as a 16 kHz waveform, checked to fit the window. A server never reads a path it is sent."""
        import base64
        import binascii
        import io

        from ..errors import TemplateError

        how = "send the clip file's bytes in base64, e.g. base64.b64encode(open('clip.wav', 'rb').read()).decode()"
        data = text.split(",", 1)[1] if text.startswith("data:") else text
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise TemplateError("the audio field is not base64 (a server hears clips sent to it, never paths)",
                                where=where, fix=how) from None
        soundfile, _ = audio_libraries()
        try:
            wave, rate = soundfile.read(io.BytesIO(raw), dtype="float32", always_2d=True)
        except Exception as e:  # soundfile.LibsndfileError and friends
            raise TemplateError(f"the audio field is not a sound file ({str(e).splitlines()[0][:200]})", where=where,
                                fix=f"{how}: WAV, FLAC or OGG") from None
        try:
            wave = read_audio({"array": wave.mean(axis=1), "sampling_rate": rate}, where)
        except DataError as e:
            raise TemplateError(e.what, where=where, fix=e.fix) from None
        window = getattr(self.feature_extractor, "n_samples", 30 * SAMPLE_RATE)
        if len(wave) > window:
            raise TemplateError(f"the clip is {len(wave) / SAMPLE_RATE:.1f} s long; Whisper hears {window / SAMPLE_RATE:.0f} s at a time",
                                where=where, fix=f"cut it into clips of at most {window / SAMPLE_RATE:.0f} s")
        return wave

    # ---- the encoder -------------------------------------------------------------------------
    def features(self, audios: list, keys: list[str] | None = None, where: str = "audio") -> torch.Tensor:
        """(n, mels, frames) log-mel features of each clip, padded to Whisper's 30 s window; with ``keys``, a clip
        seen before is neither read nor transformed again."""
        keys = keys or [None] * len(audios)
        got = [None if k is None else self._features.get(k) for k in keys]
        todo = [i for i, g in enumerate(got) if g is None]
        waves = [read_audio(audios[i], f"{where} {i + 1}") for i in todo]
        window = getattr(self.feature_extractor, "n_samples", 30 * SAMPLE_RATE)
        for i, w in zip(todo, waves):
            if len(w) > window:  # the feature extractor would cut it silently
                raise DataError(f"the clip is {len(w) / SAMPLE_RATE:.1f} s long; Whisper hears {window / SAMPLE_RATE:.0f} s at a time",
                                where=f"{where} {i + 1}", fix=f"cut it into clips of at most {window / SAMPLE_RATE:.0f} s")
        if waves:
            for i, f in zip(todo, self.feature_extractor(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features):
                got[i] = f
                if keys[i] is not None:
                    self._features.put(keys[i], f)
        return torch.stack(got)

    def _with_features(self, rendered, rows):
        audios = [r.audio for r in rendered]
        rows.audio_keys = [_audio_key(a) for a in audios]
        rows.input_features = self.features(audios, rows.audio_keys)
        return rows

    def encode(self, features: torch.Tensor, keys: list[str] | None = None) -> torch.Tensor:
        """The encoder's outputs (n, frames / 2, hidden). While no encoder weight trains, a clip heard before (the same
        path or samples, the same encoder weights) is not run again."""
        encoder = self.model.get_encoder()
        params = list(encoder.parameters())
        frozen = not (torch.is_grad_enabled() and any(p.requires_grad for p in params))
        if keys is None or not frozen:
            return encoder(input_features=features.to(params[0].dtype)).last_hidden_state
        stamp = hash(tuple((id(p), p._version) for p in params))  # an optimizer step or a new adapter changes it
        got = [self._encoded.get((stamp, k)) for k in keys]
        todo = [i for i, g in enumerate(got) if g is None]
        if todo:
            for i, h in zip(todo, encoder(input_features=features[todo].to(params[0].dtype)).last_hidden_state.detach()):
                got[i] = h
                self._encoded.put((stamp, keys[i]), h)
        return torch.stack(got)

    def _encoder_states(self, inputs: dict, rows) -> torch.Tensor:
        feats = inputs["input_features"]
        hidden = self.encode(feats, getattr(rows, "audio_keys", None))
        idx = getattr(rows, "audio_rows", None)
        return hidden if idx is None else hidden[idx.to(hidden.device)]

    def _decoder(self, inputs: dict, encoder_states: torch.Tensor) -> torch.Tensor:
        return self.model.get_decoder()(inputs_embeds=inputs["decoder_inputs_embeds"], attention_mask=inputs["decoder_attention_mask"],
                                        position_ids=inputs["decoder_position_ids"], encoder_hidden_states=encoder_states,
                                        use_cache=False).last_hidden_state

    def input_kwargs(self, embeds, attention_mask, *, prefix_length=0, batch=None):
        kw = dict(decoder_inputs_embeds=embeds, decoder_attention_mask=attention_mask,
                  decoder_position_ids=(attention_mask.cumsum(-1) - 1).clamp_min(0))
        if batch is not None and getattr(batch, "input_features", None) is not None:
            kw["input_features"] = batch.input_features
        return kw

    def probe(self, ids):
        """The decoder alone (no audio): prefix tuning's injection points are its self-attention layers."""
        d = self.model.config.d_model
        enc = torch.zeros(1, 1, d, device=ids.device, dtype=self.model.get_input_embeddings().weight.dtype)
        return self.model.get_decoder()(input_ids=ids, attention_mask=torch.ones_like(ids), encoder_hidden_states=enc, use_cache=False)

    def prompt_kv(self, embeds):
        return None

    # ---- classification: the decoder's rows are a causal LM's --------------------------------
    def build(self, rendered, words, *, fast, padding_side, shared_context=True):
        rows = super().build(rendered, words, fast=fast, padding_side=padding_side, shared_context=False)
        per = rows.input_ids.shape[0] // len(rendered)
        rows.audio_rows = torch.arange(len(rendered)).repeat_interleave(per) if per > 1 else None
        return self._with_features(rendered, rows)

    def word_scores(self, inputs, rows, past=None):
        hidden = self._decoder(inputs, self._encoder_states(inputs, rows))
        at = torch.arange(hidden.shape[0], device=hidden.device)
        if rows.read_pos is not None:
            return self.label_rows(hidden[at, rows.read_pos], rows.word_ids)
        return self._general_scores(self.logits(hidden[at[:, None], rows.target_pos.clamp_min(0)]), rows)

    # ---- generation: [prompt][start of transcript][target][eos] in the decoder -----------------
    def target_batch(self, rendered, targets):
        return self._with_features(rendered, super().target_batch(rendered, targets))

    def source_batch(self, rendered):
        return self._with_features(rendered, super().source_batch(rendered))

    def token_loss(self, inputs, batch: GenBatch):
        hidden = self._decoder(inputs, self._encoder_states(inputs, batch))
        labels = batch.labels[:, 1:]
        sel = labels != -100
        return self.cross_entropy(hidden[:, :-1][sel], labels[sel]), int(sel.sum())

    def generate_kwargs(self):
        gc = getattr(self.model, "generation_config", None)
        # max_length None: max_new_tokens bounds the output (else Whisper's own 448 is merged in, and warned about)
        return {"decoder_start_token_id": self.sot_id, "suppress_tokens": list(getattr(gc, "suppress_tokens", None) or []) or None,
                "max_length": None}

    def generate(self, inputs, **kwargs):
        from transformers import GenerationMixin
        from transformers.modeling_outputs import BaseModelOutput

        enc = self.encode(inputs["input_features"])
        embeds, mask = inputs["decoder_inputs_embeds"], inputs["decoder_attention_mask"]
        ids = torch.full(mask.shape, self.pad_id, dtype=torch.long, device=mask.device)
        with self._first_step_embeddings(embeds):
            # attention_mask: every encoder frame is real (Whisper reads it only for SpecAugment while training)
            return GenerationMixin.generate(self.model, encoder_outputs=BaseModelOutput(last_hidden_state=enc), decoder_input_ids=ids,
                                            decoder_attention_mask=mask, attention_mask=torch.ones(enc.shape[:2], dtype=torch.long,
                                                                                                   device=enc.device), **kwargs)

    def generated_width(self, inputs):
        return inputs["decoder_attention_mask"].shape[1]

    @contextmanager
    def _first_step_embeddings(self, embeds: torch.Tensor):
        """While inside, the decoder's first embedding lookup (the whole prompt, repeated per beam) returns ``embeds``:
        the method's soft rows reach ``generate``, whose later steps embed the new tokens as usual."""
        used = [False]

        def hook(module, args, out):
            if used[0] or out.dim() != 3 or out.shape[1] != embeds.shape[1] or out.shape[0] % embeds.shape[0]:
                return None
            used[0] = True
            return embeds.to(out.dtype).repeat_interleave(out.shape[0] // embeds.shape[0], 0)

        handle = self.model.get_input_embeddings().register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()


def is_speech_model(model_or_config) -> bool:
    """Whether a model (or its config) is a speech encoder-decoder transformers knows (Whisper and its kind)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES

    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "model_type", None) in MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES
