"""Generation tasks (summarization, translation): a source template, a target field, a method, a backbone.

    from prompttune.generation import GenerationModel
    gm = GenerationModel(backbone, "Translate to German: {en}\\nGerman:", target="de", method="soft-prompt")
    gm.fit(train_rows, dev_rows)                       # teacher-forced on the target tokens only
    gm.generate([{"en": "Save changes"}], max_new_tokens=20, num_beams=4)
    gm.evaluate(test_rows)                             # ROUGE-1/2/L, BLEU, chrF, tokens/s

Families:

- ``causal-lm``: one sequence ``[rendered source][target][eos]``; the loss reads only the target (and eos)
  positions, so the template, its soft tokens and the source are never trained towards. Trailing spaces of
  the template (``"Headline: "``) move into the target (`` " Headline words"``), as a BPE tokenizer writes
  them in prose; newlines stay in the prompt.
- ``seq2seq``: the rendered source goes to the encoder; the decoder reads ``[start][target]`` and predicts
  ``[target][eos]``.

The source is rendered by :class:`prompttune.template.Renderer`: only input fields are ever truncated
(to ``max_length`` tokens), never the template text or the soft tokens. The target is cut to
``max_target_length`` tokens (eos included).

Methods enter through one seam, :func:`method_inputs`: by default a method's ``embed()`` writes its soft rows
into the input embeddings. A method that instead adds per-layer key/value prefixes defines
``model_inputs(backbone, input_ids, soft_index, attention_mask) -> dict`` returning the keyword arguments for
the model (``inputs_embeds``, ``attention_mask`` widened over the prefix, ``past_key_values``, ...); the loss and
``model.generate`` both take what it returns, so generation keeps using the KV cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field as PField
from torch import nn

from .backbone import TensorBatch
from .errors import ConfigError, TemplateError
from .model import Tunable
from .template import Rendered, Renderer, Template, Text, _segment_text

GENERATION_FAMILIES = ("causal-lm", "seq2seq")


class GenerateConfig(BaseModel):
    """Decoding options (config section ``generation``)."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = PField(32, ge=1, le=4096, description="most tokens generated per example")
    num_beams: int = PField(1, ge=1, le=64, description="beam search width (1 = greedy or sampling)")
    do_sample: bool = PField(False, description="sample instead of greedy / beam search")
    temperature: float = PField(1.0, gt=0, description="sampling temperature")
    top_k: int = PField(50, ge=0, description="sampling: keep the k most likely tokens (0 = all)")
    top_p: float = PField(1.0, gt=0, le=1, description="sampling: nucleus probability mass")
    repetition_penalty: float = PField(1.0, gt=0, description="HF repetition penalty (1 = none)")
    stop: list[str] = PField(default_factory=list, description="stop strings: generation ends at the first one, which is cut off")
    seed: int = PField(0, ge=-(2**63), le=2**64 - 1, description="seed for sampling (a 64-bit integer, as torch takes)")
    batch_size: int = PField(8, ge=1, description="examples per generate() call (left-padded)")
    use_cache: bool = PField(True, description="reuse the keys/values of the prompt and earlier tokens (False recomputes "
                                               "everything each step; only for checking)")
    language: str = PField("auto", description="target language for the metrics: zh scores Chinese by characters "
                                               "(sacreBLEU tokenize=zh); auto detects Chinese references")


@dataclass
class GenBatch(TensorBatch):
    """Model rows of a generation batch. ``labels`` is -100 wherever no target token is predicted."""

    input_ids: torch.Tensor
    soft_index: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None = None
    decoder_input_ids: torch.Tensor | None = None
    decoder_attention_mask: torch.Tensor | None = None


def method_inputs(method, backbone, input_ids: torch.Tensor, soft_index: torch.Tensor, attention_mask: torch.Tensor) -> dict:
    """Keyword arguments for the model (loss and ``generate``): the seam where a method enters generation."""
    hook = getattr(method, "model_inputs", None)
    if hook is not None:
        return dict(hook(backbone, input_ids, soft_index, attention_mask))
    backbone.set_prefix(method.prefix_kv(backbone))  # deep prompts enter at the attention level (None: no prefix)
    kw = {"inputs_embeds": method.embed(backbone, input_ids, soft_index), "attention_mask": attention_mask}
    fam = backbone.family
    if fam.position_offset and fam.takes_position_ids:  # positions continue after a prefix, in the loss and in generate()
        kw["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp_min(0) + fam.position_offset
    return kw


def _pad(seqs: Sequence[Sequence[int]], value: int, side: str) -> torch.Tensor:
    T = max(1, max((len(s) for s in seqs), default=0))
    out = torch.full((len(seqs), T), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            t = torch.tensor(list(s), dtype=torch.long)
            if side == "left":
                out[i, T - len(s):] = t
            else:
                out[i, : len(s)] = t
    return out


def _mask_of(seqs, side: str) -> torch.Tensor:
    return _pad([[1] * len(s) for s in seqs], 0, side)


class _StopOnStrings:
    """A stopping criterion: a row is done once its generated text contains a stop string."""

    def __init__(self, tokenizer, stops: Sequence[str], skip: int):
        self.tokenizer, self.stops, self.skip = tokenizer, [s for s in stops if s], skip

    def __call__(self, input_ids, scores, **kw):
        done = [any(s in self.tokenizer.decode(row[self.skip:], skip_special_tokens=True) for s in self.stops)
                for row in input_ids.tolist()]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest stop string."""
    end = len(text)
    for s in stops:
        if s:
            k = text.find(s)
            if 0 <= k < end:
                end = k
    return text[:end]


def hf_generation_config(backbone, opts: GenerateConfig):
    """transformers' GenerationConfig for ``opts`` on ``backbone`` (its pad, eos and decoder start tokens)."""
    from transformers import GenerationConfig

    fam = backbone.family
    kw = dict(max_new_tokens=opts.max_new_tokens, num_beams=opts.num_beams, do_sample=opts.do_sample,
              repetition_penalty=opts.repetition_penalty, pad_token_id=fam.pad_id, eos_token_id=backbone.tokenizer.eos_token_id,
              use_cache=opts.use_cache)
    if opts.do_sample:
        kw.update(temperature=opts.temperature, top_k=opts.top_k, top_p=opts.top_p)
    if fam.name == "seq2seq":
        kw["decoder_start_token_id"] = fam.start_id
    else:
        kw["bos_token_id"] = backbone.tokenizer.bos_token_id
    return GenerationConfig(**kw)


@torch.no_grad()
def decode(backbone, model_inputs: dict, opts: GenerateConfig) -> tuple[list[str], int]:
    """Run ``generate`` on prepared model inputs (:func:`method_inputs`, or a server's mixed batch) and decode each
    row up to eos and the first stop string. Returns the texts and the number of tokens generated."""
    from transformers import StoppingCriteriaList

    tok = backbone.tokenizer
    eos, pad = tok.eos_token_id, backbone.family.pad_id
    skip = 1 if backbone.family.name == "seq2seq" else 0  # a decoder's output starts with its start token
    stopping = StoppingCriteriaList([_StopOnStrings(tok, opts.stop, skip)]) if opts.stop else None
    if opts.do_sample:
        torch.manual_seed(opts.seed)
    out = backbone.model.generate(**model_inputs, generation_config=hf_generation_config(backbone, opts), stopping_criteria=stopping)
    texts, n_tokens = [], 0
    for row in out[:, skip:].tolist():
        keep = []
        for t in row:
            if t == eos:
                break
            keep.append(t)
        n_tokens += sum(1 for t in keep if t not in (pad, eos))
        texts.append(cut_at_stop(tok.decode(keep, skip_special_tokens=True), opts.stop).strip())
    return texts, n_tokens


class GenerationModel(Tunable, nn.Module):
    """Backbone + source template + target field + method. ``forward(batch)`` is the teacher-forced loss."""

    task = "generation"

    def __init__(self, backbone, template: Template | str, target: str, method="soft-prompt", *, max_length: int = 256,
                 max_target_length: int = 64, method_options: dict | None = None, init: bool = True, seed: int = 0):
        super().__init__()
        from .methods import Method, make_method

        fam = backbone.family
        if fam.name not in GENERATION_FAMILIES:
            raise ConfigError(f"generation needs a causal LM or an encoder-decoder, but {backbone.name!r} is loaded as {fam.name}",
                              where="model.family", fix="use a causal-lm (e.g. smollm2-135m) or a seq2seq model (T5, BART)")
        template = template if isinstance(template, Template) else Template(template)
        method = method if isinstance(method, Method) else make_method(method, **(method_options or {}))
        if method.family and method.family != fam.name:
            raise ConfigError(f"method {method.name!r} does not generate text (it needs a {method.family} backbone)",
                              where="method.name", fix="use zero-shot, soft-prompt or prompt-finetune for generation")
        if not isinstance(target, str) or not target:
            raise ConfigError("a generation task needs a target field", where="prompt.target", fix="set prompt.target, e.g. headline")
        if max_target_length < 2:
            raise ConfigError("max_target_length must be at least 2 (a token and eos)", where="prompt.max_target_length", fix="raise it")
        check_generation_template(template, target)
        template = method.prepare_template(template)
        template, self.space_into_target = _split_trailing_space(template) if fam.name == "causal-lm" else (template, False)
        self.backbone = backbone
        self.model = backbone.model  # registered so .parameters() / accelerate see the backbone
        self.template = template
        self.target = target
        self.method = method
        self.max_length = max_length
        self.max_target_length = max_target_length
        self.base_fingerprint = backbone.fingerprint()
        self.method.attach(backbone, template, None, init=init, seed=seed)
        tok = backbone.tokenizer
        self.renderer = Renderer(template, tok, max_length=max_length, placeholder_id=fam.placeholder_id(), soft_id=fam.pad_id,
                                 drop_mask=True, move_space_into_mask=False)
        self.eos_id = tok.eos_token_id
        self.pad_id = fam.pad_id
        self.padding_side = "right" if self.is_seq2seq else "left"  # of generation batches (training batches: right)
        self.generation = GenerateConfig()

    # ---- data -> model rows ----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.backbone.model.get_input_embeddings().weight.device

    @property
    def is_seq2seq(self) -> bool:
        return self.backbone.family.name == "seq2seq"

    def target_ids(self, text: str) -> list[int]:
        text = str(text).strip()
        if self.space_into_target and text:
            text = " " + text
        ids = self.backbone.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        if self.eos_id is None:
            return ids[: self.max_target_length]
        return ids[: self.max_target_length - 1] + [self.eos_id]

    def length(self, row: Mapping[str, str]) -> int:
        return len(self.renderer.render(row).ids) + len(self.target_ids(row.get(self.target, "")))

    def _check_target(self, rows: Sequence[Mapping[str, str]], where: str) -> None:
        for i, r in enumerate(rows):
            if self.target not in r or not str(r[self.target]).strip():
                raise ConfigError(f"example {i + 1} has no (or an empty) target {self.target!r} (it has: {', '.join(sorted(r))})",
                                  where=where, fix=f"give every example a {self.target!r} column, or map one with data.columns")

    def collate(self, rows: Sequence[Mapping[str, str]]) -> GenBatch:
        """Training rows: source + target, right-padded, loss only on target tokens."""
        rendered = [self.renderer.render(r) for r in rows]
        targets = [self.target_ids(r[self.target]) for r in rows]
        if self.is_seq2seq:
            start = self.backbone.family.start_id
            ids = [r.ids for r in rendered]
            dec = [[start] + t[:-1] for t in targets]
            return GenBatch(_pad(ids, self.pad_id, "right"), _pad([r.soft for r in rendered], -1, "right"), _mask_of(ids, "right"),
                            labels=_pad(targets, -100, "right"), decoder_input_ids=_pad(dec, self.pad_id, "right"),
                            decoder_attention_mask=_mask_of(dec, "right"))
        ids = [r.ids + t for r, t in zip(rendered, targets)]
        soft = [r.soft + [-1] * len(t) for r, t in zip(rendered, targets)]
        labels = [[-100] * len(r.ids) + t for r, t in zip(rendered, targets)]
        return GenBatch(_pad(ids, self.pad_id, "right"), _pad(soft, -1, "right"), _mask_of(ids, "right"), labels=_pad(labels, -100, "right"))

    def source_batch(self, rows: Sequence[Mapping[str, str]]) -> GenBatch:
        """Sources only, left-padded (so every row's next token is at the right edge), for ``generate``."""
        return self.pad_sources([self.renderer.render(r) for r in rows])

    def pad_sources(self, rendered: Sequence[Rendered]) -> GenBatch:
        """Rendered sources as one generation batch (a server pads several tasks' sources together with it)."""
        ids = [r.ids for r in rendered]
        side = "right" if self.is_seq2seq else "left"
        return GenBatch(_pad(ids, self.pad_id, side), _pad([r.soft for r in rendered], -1, side), _mask_of(ids, side))

    # ---- loss ------------------------------------------------------------------------------
    def _inputs(self, batch: GenBatch) -> dict:
        kw = method_inputs(self.method, self.backbone, batch.input_ids, batch.soft_index, batch.attention_mask)
        if not self.is_seq2seq and self.backbone.family.takes_position_ids and "position_ids" not in kw:
            kw["position_ids"] = (batch.attention_mask.cumsum(-1) - 1).clamp_min(0)
        return kw

    def token_losses(self, batch: GenBatch) -> tuple[torch.Tensor, int]:
        """(sum of target-token cross-entropies, number of target tokens)."""
        batch = batch.to(self.device)
        kw = self._inputs(batch)
        if self.is_seq2seq:
            logits = self.model(**kw, decoder_input_ids=batch.decoder_input_ids, decoder_attention_mask=batch.decoder_attention_mask,
                                use_cache=False).logits
            labels = batch.labels
            sel = labels != -100
            return F.cross_entropy(logits[sel].float(), labels[sel], reduction="sum"), int(sel.sum())
        # Only the positions that predict a target token go through the output layer (a 49k-row vocabulary
        # times every prompt position would dominate the step's memory).
        hidden = self.model.base_model(**kw, use_cache=False).last_hidden_state
        labels = batch.labels[:, 1:]
        sel = labels != -100
        h = hidden[:, :-1][sel]
        logits = self.model.get_output_embeddings()(h)
        post = getattr(self.backbone.family, "_postprocess", None)
        if post is not None:
            logits = post(logits)
        return F.cross_entropy(logits.float(), labels[sel], reduction="sum"), int(sel.sum())

    def forward(self, batch: GenBatch, *, as_sum: bool = False):
        """Mean cross-entropy per target token; with ``as_sum`` the (sum, count) pair of :meth:`token_losses`.
        Every loss goes through here, so a wrapper's forward hooks (FSDP's unsharding, DDP's) see it."""
        total, n = self.token_losses(batch)
        return (total, n) if as_sum else total / max(n, 1)

    @torch.no_grad()
    def loss_on(self, rows: Sequence[Mapping[str, str]], *, batch_size: int = 16) -> float:
        """Mean cross-entropy per target token over ``rows`` (teacher-forced)."""
        from .data import length_batches

        was = self.training
        self.eval()
        total, n = 0.0, 0
        for idx in length_batches([self.length(r) for r in rows], batch_size, shuffle=False):
            s, k = self(self.collate([rows[i] for i in idx]), as_sum=True)
            total += float(s)
            n += k
        self.train(was)
        return total / max(n, 1)

    # ---- generation ------------------------------------------------------------------------
    @torch.no_grad()
    def generate_batch(self, rows: Sequence[Mapping[str, str]], opts: GenerateConfig | None = None) -> tuple[list[str], int]:
        """Generate for one batch of rows; returns the texts and the number of tokens generated."""
        opts = opts or self.generation
        batch = self.source_batch(rows).to(self.device)
        kw = method_inputs(self.method, self.backbone, batch.input_ids, batch.soft_index, batch.attention_mask)
        return decode(self.backbone, kw, opts)

    def generate(self, inputs, *, progress: bool = False, **options) -> list[str]:
        """Generated text per input (a dict of fields, or a plain string for a one-field template).
        ``options`` override this model's :class:`GenerateConfig` (max_new_tokens, num_beams, do_sample, stop, ...)."""
        texts, _, _ = self._generate_all([self._as_row(x, i) for i, x in enumerate(inputs)], self.generation.model_copy(update=options) if options else self.generation,
                                         progress=progress)
        return texts

    def _generate_all(self, rows, opts: GenerateConfig, *, progress: bool = False):
        from .data import length_batches

        GenerateConfig.model_validate(opts.model_dump())
        was = self.training
        self.eval()
        out: list[str | None] = [None] * len(rows)
        n_tokens = 0
        start = time.perf_counter()
        bar = _progress(progress, len(rows), "generate")
        for idx in length_batches([len(self.renderer.render(r).ids) for r in rows], opts.batch_size, shuffle=False):
            texts, k = self.generate_batch([rows[i] for i in idx], opts)
            n_tokens += k
            for i, t in zip(idx, texts):
                out[i] = t
            bar.update(len(idx))
        bar.close()
        self.train(was)
        return out, n_tokens, time.perf_counter() - start

    def evaluate(self, rows: Sequence[Mapping[str, str]], *, progress: bool = False, with_loss: bool = True, **options) -> dict:
        """Generate for ``rows`` and score against their targets: ROUGE-1/2/L, BLEU, chrF, tokens/s (and the loss)."""
        from .metrics import generation_metrics

        self._check_target(rows, "evaluation data")
        opts = self.generation.model_copy(update=options) if options else self.generation
        outputs, n_tokens, seconds = self._generate_all(list(rows), opts, progress=progress)
        refs = [str(r[self.target]).strip() for r in rows]
        m = generation_metrics(outputs, refs, language=opts.language)
        m.update(n=len(rows), seconds=seconds, generated_tokens=n_tokens,
                 tokens_per_second=n_tokens / seconds if seconds > 0 else None,
                 examples_per_second=len(rows) / seconds if seconds > 0 else None,
                 trainable_parameters=self.num_trainable_parameters(), outputs=outputs)
        if with_loss:
            m["loss"] = self.loss_on(list(rows), batch_size=opts.batch_size)
        return m

    # ---- training, saving ------------------------------------------------------------------
    def training_task(self) -> "GenerationTask":
        return GenerationTask(self)


    def artifact_meta(self) -> dict:
        return {"task": self.task, "target": self.target, "max_target_length": self.max_target_length,
                "space_into_target": self.space_into_target, "generation": self.generation.model_dump()}

    def save(self, directory, **extra):
        from .artifact import save

        return save(self, directory, **extra)


class GenerationTask:
    """What the training loop needs from a generation model: the teacher-forced loss and dev loss."""

    metrics = ("loss",)

    def __init__(self, gm: GenerationModel):
        self.gm = gm

    def prepare(self, train_rows, dev_rows, cfg) -> None:
        if cfg.metric != "loss":
            raise ConfigError(f"train.metric {cfg.metric!r} is a classification metric; generation selects on dev loss",
                              where="train.metric", fix="set train.metric: loss")
        self.gm._check_target(train_rows, "training data")
        if dev_rows:
            self.gm._check_target(dev_rows, "dev data")

    def targets(self, rows) -> torch.Tensor:
        return torch.zeros(len(rows))  # the targets travel inside the batch

    def loss(self, model, batch, y) -> tuple[torch.Tensor, int]:
        """Mean cross-entropy per target token, and the number of target tokens."""
        labels = batch.labels if self.gm.is_seq2seq else batch.labels[:, 1:]
        return model(batch), int((labels != -100).sum())

    def evaluate(self, dev_rows, cfg) -> dict:
        return {"loss": self.gm.loss_on(dev_rows, batch_size=cfg.eval_batch_size)}


def check_generation_template(template: Template, target: str, columns=None, where: str = "prompt.template") -> None:
    """A generation template places the source and has no {mask}; the target is not one of its fields."""
    if template.n_masks:
        raise TemplateError(f"the template {template.text!r} has a {{mask}}; a generation template places only the source",
                            where=where, fix="drop {mask}: the target is generated after the template (causal LM) or by the decoder (seq2seq)")
    if target in template.fields:
        raise TemplateError(f"the target field {{{target}}} is in the template, so the model would see the answer",
                            where=where, fix=f"remove {{{target}}} from the template; prompt.target names the field to generate")
    template.check(needs_mask=False, columns=columns, where=where)


def _split_trailing_space(template: Template) -> tuple[Template, bool]:
    """Move trailing spaces of the template into the target (``"Headline: "`` -> ``"Headline:"`` + ``" words"``)."""
    segs = list(template.segments)
    if not segs or not isinstance(segs[-1], Text):
        return template, False
    text = segs[-1].text
    stripped = text.rstrip(" \t")
    if stripped == text:
        return template, False
    head = "".join(_segment_text(s) for s in segs[:-1])
    return Template(head + (_segment_text(Text(stripped)) if stripped else "")), True


def _progress(enabled: bool, total: int, desc: str):
    from .model import _progress as p

    return p(enabled, total, desc)
