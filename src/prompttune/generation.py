"""Generation tasks (summarization, translation): a source template, a target field, a method, a backbone.

    from prompttune.generation import GenerationModel
    gm = GenerationModel(backbone, "Translate to German: {en}\\nGerman:", target="de", method="soft-prompt")
    gm.fit(train_rows, dev_rows)                       # teacher-forced on the target tokens only
    gm.generate([{"en": "Save changes"}], max_new_tokens=20, num_beams=4)
    gm.evaluate(test_rows)                             # ROUGE-1/2/L, BLEU, chrF, tokens/s

What differs between families (one sequence ``[source][target][eos]`` for a causal LM, the source to the encoder
and ``[start][target]`` to the decoder for an encoder-decoder, where padding goes, the special tokens ``generate``
needs) is the family's (:mod:`prompttune.backbone.families`); the loss reads only the target (and eos) positions, so
the template, its soft tokens and the source are never trained towards. Where the family writes the target after the
prompt, trailing spaces of the template (``"Headline: "``) move into the target (`` " Headline words"``), as a BPE
tokenizer writes them in prose; newlines stay in the prompt.

The source is rendered by :class:`prompttune.template.Renderer`: only input fields are ever truncated
(to ``max_length`` tokens), never the template text or the soft tokens. The target is cut to
``max_target_length`` tokens (eos included).

A method enters through its one door, ``method.model_inputs(backbone, batch)``: the loss and ``model.generate``
both take what it returns (embeddings with its soft rows, positions after its prefix), so generation keeps using
the KV cache.
"""

from __future__ import annotations

import time
from typing import Mapping, Sequence

import torch
from torch import nn

from .backbone import GenBatch
from .errors import ConfigError
from .model import Tunable
from .progress import progress_bar
from .schemas import DEFAULT_METHOD, GenerateConfig
from .template import Rendered, Renderer, Template, Text, segment_text

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
    """transformers' GenerationConfig for ``opts`` on ``backbone`` (its pad, eos and the family's start tokens)."""
    from transformers import GenerationConfig

    kw = dict(max_new_tokens=opts.max_new_tokens, num_beams=opts.num_beams, do_sample=opts.do_sample,
              repetition_penalty=opts.repetition_penalty, pad_token_id=backbone.family.pad_id,
              eos_token_id=backbone.tokenizer.eos_token_id, use_cache=opts.use_cache, **backbone.family.generate_kwargs())
    if opts.do_sample:
        kw.update(temperature=opts.temperature, top_k=opts.top_k, top_p=opts.top_p)
    return GenerationConfig(**kw)


@torch.no_grad()
def decode(backbone, model_inputs: dict, opts: GenerateConfig) -> tuple[list[str], int]:
    """Run ``generate`` on prepared model inputs (a method's ``model_inputs``, or a server's mixed batch) and decode each
    row up to eos and the first stop string. Returns the texts and the number of tokens generated."""
    from transformers import StoppingCriteriaList

    tok = backbone.tokenizer
    eos, pad = tok.eos_token_id, backbone.family.pad_id
    skip = backbone.family.generated_width(model_inputs)  # e.g. a decoder's output starts with its start token
    stopping = StoppingCriteriaList([_StopOnStrings(tok, opts.stop, skip)]) if opts.stop else None
    if opts.do_sample:
        torch.manual_seed(opts.seed)
    out = backbone.family.generate(model_inputs, generation_config=hf_generation_config(backbone, opts), stopping_criteria=stopping)
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
    labelled = False

    def __init__(self, backbone, template: Template | str, target: str, method=DEFAULT_METHOD, *, max_length: int = 256,
                 max_target_length: int = 64, method_options: dict | None = None, init: bool = True, seed: int = 0,
                 backbone_options: dict | None = None):
        """``backbone``: a :class:`~prompttune.backbone.Backbone`, or a model name loaded with ``backbone_options``."""
        super().__init__()
        from .backbone import Backbone
        from .methods import Method, make_method

        method = method if isinstance(method, Method) else make_method(method, **(method_options or {}))  # bad options: before any load
        if not isinstance(backbone, Backbone):
            backbone = Backbone.load(backbone, **(backbone_options or {}))
        fam = backbone.family
        if not fam.generates:
            raise ConfigError(f"generation needs a causal LM or an encoder-decoder, but {backbone.name!r} is loaded as {fam.name}",
                              where="model.family", fix="use a causal-lm (e.g. smollm2-135m) or a seq2seq model (T5, BART)")
        template = template if isinstance(template, Template) else Template(template)
        if not method.generates:
            raise ConfigError(f"method {method.name!r} does not generate text", where="method.name",
                              fix="use zero-shot, soft-prompt, prefix, lora or prompt-finetune for generation")
        if not isinstance(target, str) or not target:
            raise ConfigError("a generation task needs a target field", where="prompt.target", fix="set prompt.target, e.g. headline")
        if max_target_length < 2:
            raise ConfigError("max_target_length must be at least 2 (a token and eos)", where="prompt.max_target_length", fix="raise it")
        template.check_generation(target)
        template = method.prepare_template(template)
        template, self.space_into_target = _split_trailing_space(template) if fam.target_takes_trailing_space else (template, False)
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
                                 drop_mask=True, move_space_into_mask=False, **fam.renderer_options(template))
        self.eos_id = tok.eos_token_id
        self.pad_id = fam.pad_id
        self.padding_side = fam.source_padding_side  # of generation batches (training batches: right)
        self.generation = GenerateConfig()

    # ---- data -> model rows ----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.backbone.model.get_input_embeddings().weight.device

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

    def check_targets(self, rows: Sequence[Mapping[str, str]], where: str) -> None:
        for i, r in enumerate(rows):
            if self.target not in r or not str(r[self.target]).strip():
                raise ConfigError(f"example {i + 1} has no (or an empty) target {self.target!r} (it has: {', '.join(sorted(r))})",
                                  where=where, fix=f"give every example a {self.target!r} column, or map one with data.columns")

    def collate(self, rows: Sequence[Mapping[str, str]]) -> GenBatch:
        """Training rows: source + target, right-padded, loss only on target tokens."""
        return self.backbone.family.target_batch([self.renderer.render(r) for r in rows], [self.target_ids(r[self.target]) for r in rows])

    def source_batch(self, rows: Sequence[Mapping[str, str]]) -> GenBatch:
        """Sources only, padded for ``generate`` (left for a causal LM, so every row's next token is at the right edge)."""
        return self.pad_sources([self.renderer.render(r) for r in rows])

    def pad_sources(self, rendered: Sequence[Rendered]) -> GenBatch:
        """Rendered sources as one generation batch (a server pads several tasks' sources together with it)."""
        return self.backbone.family.source_batch(list(rendered))

    # ---- loss ------------------------------------------------------------------------------
    def token_losses(self, batch: GenBatch) -> tuple[torch.Tensor, int]:
        """(sum of target-token cross-entropies, number of target tokens)."""
        batch = batch.to(self.device)
        return self.backbone.family.token_loss(self.method.model_inputs(self.backbone, batch), batch)

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
        return decode(self.backbone, self.method.model_inputs(self.backbone, batch), opts)

    def generate(self, inputs, *, progress: bool = False, **options) -> list[str]:
        """Generated text per input (a dict of fields, or a plain string for a one-field template).
        ``options`` override this model's :class:`GenerateConfig` (max_new_tokens, num_beams, do_sample, stop, ...)."""
        from .data import as_rows

        opts = self.generation.model_copy(update=options) if options else self.generation
        rows = [self._as_row(x, i) for i, x in enumerate(as_rows(inputs, role="test", require_label=False))]
        texts, _, _ = self._generate_all(rows, opts, progress=progress)
        return texts

    def _generate_all(self, rows, opts: GenerateConfig, *, progress: bool = False):
        from .data import length_batches

        GenerateConfig.model_validate(opts.model_dump())
        was = self.training
        self.eval()
        out: list[str | None] = [None] * len(rows)
        n_tokens = 0
        start = time.perf_counter()
        bar = progress_bar(progress, len(rows), "generate")
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
        from .data import as_rows
        from .metrics import generation_metrics

        rows = as_rows(rows, role="test", require_label=False)  # a datasets.Dataset (or a DatasetDict's test split)
        self.check_targets(rows, "evaluation data")
        opts = self.generation.model_copy(update=options) if options else self.generation
        outputs, n_tokens, seconds = self._generate_all(list(rows), opts, progress=progress)
        refs = [str(r[self.target]).strip() for r in rows]
        m = generation_metrics(outputs, refs, language=opts.language, error_rates=self.backbone.family.hears)
        m.update(n=len(rows), seconds=seconds, generated_tokens=n_tokens,
                 tokens_per_second=n_tokens / seconds if seconds > 0 else None,
                 examples_per_second=len(rows) / seconds if seconds > 0 else None,
                 trainable_parameters=self.num_trainable_parameters(), outputs=outputs)
        if with_loss:
            m["loss"] = self.loss_on(list(rows), batch_size=opts.batch_size)
        return m


def _split_trailing_space(template: Template) -> tuple[Template, bool]:
    """Move trailing spaces of the template into the target (``"Headline: "`` -> ``"Headline:"`` + ``" words"``)."""
    segs = list(template.segments)
    if not segs or not isinstance(segs[-1], Text):
        return template, False
    text = segs[-1].text
    stripped = text.rstrip(" \t")
    if stripped == text:
        return template, False
    head = "".join(segment_text(s) for s in segs[:-1])
    return Template(head + (segment_text(Text(stripped)) if stripped else "")), True

