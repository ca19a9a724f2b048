"""Generation tasks (summarization, translation) in the serving engine, beside classification tasks.

Requests of several generation tasks that ask for the same decoding settings are batched into one
``generate()`` call: each row's source is rendered by its own task's template, its soft tokens index that task's
rows of a stacked soft table, and the batch is left-padded (right-padded for an encoder-decoder), exactly as
:meth:`prompttune.generation.GenerationModel.generate` pads its own batches. A prefix task (keys/values in every
attention layer) generates in a call of its own, since the prefix is one per forward. Sampling requests are never
merged with other requests, and are cut into the batches the task run alone would make, so a request's ``seed``
gives the same text as ``GenerationModel.generate`` (as long as the request fits in one engine batch,
``max_batch``). With the prompt cache on (causal LMs), the tokens every source of a task starts with come from
the cache, as in classification: generate() starts from past keys/values and computes only the rest.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from pydantic import ValidationError

from ..data import length_batches
from ..errors import ConfigError
from ..generation import decode
from ..schemas import REQUEST_DECODING, GenerateConfig
from ..template import Rendered
from .tasks import Job, ServedTask, register_task_kind, row_cache


_calls = itertools.count()


@dataclass(frozen=True)
class GenerateJob:
    """One rendered source with its decoding settings; jobs with equal ``key`` may share a generate() call."""

    source: Rendered
    opts: GenerateConfig
    key: tuple


@register_task_kind
class ServedGeneration(ServedTask):
    """A generation artifact (source template + target + frozen-backbone method) on the shared backbone."""

    kind = "generation"
    operations = frozenset({"generate"})

    def __init__(self, name, directory, meta, gm):
        super().__init__(name, directory, meta, family=gm.backbone.family)
        self.gm = gm
        self.fields = list(gm.template.fields)
        with torch.no_grad():
            table = gm.method.soft_table(gm.backbone)
            self.table = table.detach() if table is not None else None
        # one task per generate() call: a prefix (one per forward), or a speech task (its method puts in the clips)
        self.deep = not gm.method.shares_batch or self.speech is not None

    @classmethod
    def load(cls, engine, name, directory, meta):
        cls.check_shareable(engine, directory, meta)
        task = cls(name, directory, meta, cls.load_onto(engine, directory))
        if engine.prefix_cache and engine.backbone.family.caches_prompt and not task.deep:
            # generate() must be given at least the source's last token to start from
            task.build_prompt_cache(engine, task.gm.renderer.render, task.table, lambda r: len(r.ids) - 1)
        return task

    def options(self, options: dict) -> GenerateConfig:
        """The artifact's decoding settings with a request's overrides, validated."""
        unknown = sorted(set(options) - set(REQUEST_DECODING))
        if unknown:
            raise ConfigError(f"unknown generation option(s) {unknown}", where="request",
                              fix=f"use only: {', '.join(REQUEST_DECODING)}")
        try:
            return GenerateConfig.model_validate({**self.gm.generation.model_dump(), **{k: v for k, v in options.items() if v is not None}})
        except ValidationError as e:
            err = e.errors()[0]
            raise ConfigError(f"generation option {'.'.join(map(str, err['loc']))}: {err['msg']}", where="request",
                              fix="see GET /v1/tasks/{task} for the task's defaults") from None

    def make_jobs(self, operation, inputs, **options):
        if operation not in self.operations:
            raise self.unsupported(operation)
        opts = self.options(options)
        settings = opts.model_dump(exclude={"batch_size", "language"})
        # Sampled rows draw from one generator seeded per call: they stay with the inputs of their own request.
        key = (json.dumps(settings, sort_keys=True), next(_calls) if opts.do_sample else None)
        return [GenerateJob(self.gm.renderer.render(self.as_row(x, i)), opts, key) for i, x in enumerate(inputs)]

    def format_result(self, operation, raw):
        return {"text": raw}

    def describe(self):
        m = self.meta
        return {**super().describe(), "fields": self.fields, "target": self.gm.target, "template": m.get("template"),
                "method": m.get("method"), "generation": self.gm.generation.model_dump(exclude={"batch_size", "language"}),
                "soft_tokens": 0 if self.table is None else int(self.table.shape[0]),
                "trainable_parameters": m.get("trainable_parameters"), "metrics": m.get("metrics"),
                "backbone": m.get("backbone", {}).get("name"), "created": m.get("created")}

    # ---- batch ---------------------------------------------------------------------------------
    @classmethod
    def run_batch(cls, engine, jobs: list[Job]) -> list[Any]:
        """Texts for every job: one generate() call per set of decoding settings (and per prefix task)."""
        out: list[Any] = [None] * len(jobs)
        groups: dict[tuple, list[int]] = {}
        for i, j in enumerate(jobs):
            groups.setdefault((j.payload.key, j.task.name if j.task.deep else None), []).append(i)
        for idx in groups.values():
            opts = jobs[idx[0]].payload.opts
            # A sampled request is cut into the batches GenerationModel.generate would make of it, so each batch
            # draws the same numbers as there (greedy and beam search do not depend on the batching).
            subs = length_batches([len(jobs[i].payload.source.ids) for i in idx], opts.batch_size, shuffle=False) \
                if opts.do_sample else [range(len(idx))]
            for sub in subs:
                part = [idx[k] for k in sub]
                for i, text in zip(part, cls._generate(engine, [jobs[i] for i in part])):
                    out[i] = text
        return out

    @staticmethod
    def _generate(engine, jobs: Sequence[Job]) -> list[str]:
        bb = engine.backbone
        first = jobs[0].task
        use_cache = engine.prefix_cache and bb.family.caches_prompt and not first.deep
        plen = [j.task.prefix_len(j.payload.source) if use_cache else 0 for j in jobs]
        offsets: dict[str, int] = {}
        tables = []
        sources = []
        for j, p in zip(jobs, plen):
            t = j.task
            if t.table is not None and t.name not in offsets:
                offsets[t.name] = sum(x.shape[0] for x in tables)
                tables.append(t.table)
            off = offsets.get(t.name, 0)
            r = t.cut(j.payload.source, p)  # the cached prompt's tokens come from the cache
            sources.append(Rendered(r.ids, [s + off if s >= 0 else s for s in r.soft], r.mask, audio=r.audio))
        batch = first.gm.pad_sources(sources).to(engine.device)
        past = row_cache(plen, [j.task for j in jobs], engine.device) if use_cache else None
        if first.deep:  # one prefix task: its own method builds the inputs and puts its prefix in the attention layers
            kw = first.gm.method.model_inputs(bb, batch)
        else:  # the stacked soft tables of every task in the call, no prefix
            embeds = bb.embed(batch.input_ids, batch.soft_index, torch.cat(tables) if tables else None)
            kw = bb.inputs(embeds, batch.attention_mask)  # (clears a prefix task's keys/values from the attention layers)
            if past is not None:
                kw = bb.family.generate_after(embeds, batch.attention_mask, past, beams=jobs[0].payload.opts.num_beams)
        engine.stats.forward(rows=len(sources), computed=int(batch.attention_mask.sum()), reused=sum(plen))
        texts, _ = decode(bb, kw, jobs[0].payload.opts)
        return texts
