"""The inference engine: one frozen backbone, many tuned prompts, requests from different tasks in one batch.

Each loaded artifact is a *task*. Requests are rendered in the caller's thread (so a bad input fails at once),
queued, and a worker thread takes up to ``max_batch`` inputs, waiting at most ``max_wait_ms`` for the batch to
fill. Within a batch every row keeps its own prompt:

- soft prompts: the soft tables of the tasks in the batch are stacked into one table and each row's soft
  indices are offset to its task's rows, so one embedding pass writes every task's soft tokens;
- verbalizers: the union of the label words' first tokens is scored once, and each row reads its own columns
  (multi-token words and templates with text after ``{mask}`` go through the likelihood path, which also mixes
  tasks: it is run as a second forward only when such rows are in the batch);
- prompt caching (causal LMs): the part of the input every request of a task shares (special tokens, soft tokens
  and template text before the first field) is run through the backbone once per task; its keys/values are
  reused for every row, so a batch only computes the tokens after it.

Rows that cannot share the mixed forward are still batched with the other requests of their own task: a deep
prompt (prefix) lives in every attention layer, and an encoder + head task carries its own classification head,
which is put into the backbone for that task's forward.

Task kinds are a registry (``TASK_KINDS``, keyed by the artifact's ``task`` field): ``classification`` here,
``generation`` in :mod:`prompttune.serve.generation`. A kind implements::

    @register_task_kind
    class SomeTask(ServedTask):
        kind = "..."                             # prompt.json "task"
        operations = frozenset({"..."})          # POST /v1/tasks/{task}/<operation> routes here
        @classmethod
        def load(cls, engine, name, directory, meta): ...      # onto engine.backbone; refuse what cannot share it
        def make_jobs(self, operation, inputs, **options): ...  # validate + render, in the caller's thread
        @classmethod
        def run_batch(cls, engine, jobs): ...                    # one result per job, computed together
        def format_result(self, operation, raw): ...             # JSON-ready answer for one input
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..artifact import read_meta
from ..backbone import Backbone, Rows
from ..errors import ArtifactError, ConfigError, PromptTuneError, TemplateError
from ..template import Rendered

log = logging.getLogger(__name__)

_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")


class UnknownTaskError(PromptTuneError):
    """A request names a task the engine has not loaded."""


class TaskConflictError(PromptTuneError):
    """An artifact that cannot be served next to the others (another backbone, a trained backbone, a name in use)."""


class OverloadedError(PromptTuneError):
    """The queue is full; the caller should retry after ``retry_after`` seconds."""

    def __init__(self, what: str, *, retry_after: float = 1.0, **kw):
        super().__init__(what, **kw)
        self.retry_after = retry_after


class UnsupportedError(PromptTuneError):
    """An operation a task (or this server) does not support, e.g. generate on a classification task."""

    def __init__(self, what: str, *, implemented: bool = True, **kw):
        super().__init__(what, **kw)
        self.implemented = implemented  # False: no loaded task kind can do it at all (HTTP 501)


# ------------------------------------------------------------------------------------------------
# Task kinds
# ------------------------------------------------------------------------------------------------
@dataclass
class Job:
    """One input of one request, rendered and waiting for its batch."""

    task: "ServedTask"
    payload: Any
    request: "_Request"
    index: int


class ServedTask:
    """A loaded artifact the engine serves. Subclasses register a ``kind`` (the artifact's ``task`` field)."""

    kind: ClassVar[str]
    operations: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, name: str, directory: Path, meta: dict):
        self.name = name
        self.directory = directory
        self.meta = meta

    @classmethod
    def load(cls, engine: "ServeEngine", name: str, directory: Path, meta: dict) -> "ServedTask":
        raise NotImplementedError

    def make_jobs(self, operation: str, inputs: Sequence[Any], **options) -> list[Any]:
        """Validate and prepare inputs (in the caller's thread); raise PromptTuneError for bad input, and
        UnsupportedError for an operation this kind lacks (``unsupported`` builds it)."""
        raise NotImplementedError

    def format_result(self, operation: str, raw: Any) -> dict:
        """The JSON-ready answer for one input."""
        raise NotImplementedError

    def unsupported(self, operation: str) -> "UnsupportedError":
        return UnsupportedError(f"task {self.name!r} is a {self.kind} task; it cannot {operation}", where=self.name,
                                implemented=any(operation in k.operations for k in TASK_KINDS.values()),
                                fix=f"use {', '.join(sorted(self.operations))} for this task" + (
                                    "" if any(operation in k.operations for k in TASK_KINDS.values())
                                    else f"; no task kind installed in this server can {operation}"))

    @classmethod
    def run_batch(cls, engine: "ServeEngine", jobs: list[Job]) -> list[Any]:
        """Results for jobs of this kind, in order, computed together."""
        raise NotImplementedError

    def as_row(self, x, index: int | None = None) -> dict:
        """One input (an object with the template's fields, or a bare string for a one-field template) as a row.
        ``index``: its place in the request, named in errors."""
        from ..template import check_input_texts

        check_input_texts(x, "input" if index is None else f"inputs[{index}]")
        if isinstance(x, Mapping):
            missing = [f for f in self.fields if f not in x]
            if missing:
                raise TemplateError(f"the input has no field {missing[0]!r}; task {self.name!r} needs {self.fields}",
                                    where="input", fix=f"send an object with the keys {self.fields}")
            bad = [k for k in self.fields if not isinstance(x[k], str)]
            if bad:
                raise TemplateError(f"field {bad[0]!r} must be text", where="input", fix="send strings")
            return {f: x[f] for f in self.fields}
        if isinstance(x, str):
            if len(self.fields) != 1:
                raise TemplateError(f"task {self.name!r} has fields {self.fields}; a bare string fills only a one-field template",
                                    where="input", fix=f"send an object with the keys {self.fields}")
            return {self.fields[0]: x}
        raise TemplateError(f"an input must be a string or an object, got {type(x).__name__}", where="input",
                            fix="send a string, or an object with one key per template field")

    @staticmethod
    def check_shareable(engine: "ServeEngine", directory: Path, meta: dict) -> str:
        """Refuse an artifact that cannot share the engine's frozen backbone; returns its method name."""
        from ..methods import METHODS

        bb = engine.backbone
        method = meta.get("method", {}).get("name")
        mcls = METHODS.get(method)
        if meta.get("trained_backbone") or (mcls is not None and mcls.trains_backbone):
            raise TaskConflictError(f"method {method!r} trains the backbone's own weights, so this artifact carries its own "
                                    "model and cannot share the frozen backbone", where=str(directory),
                                    fix="serve it with a separate `prompttune serve` process, or train a soft-prompt artifact")
        if method not in SERVABLE_METHODS:
            raise TaskConflictError(f"method {method!r} is not supported by the serving engine (it serves "
                                    f"{', '.join(sorted(SERVABLE_METHODS))} artifacts on a frozen backbone)",
                                    where=str(directory), fix="load it with prompttune.load() and call predict, or serve it alone")
        family = meta.get("backbone", {}).get("family")
        if family and family != bb.family.name:
            raise TaskConflictError(f"this artifact was trained on a {family} model, the server's backbone is a {bb.family.name}",
                                    where=str(directory), fix="serve it with a server started on its own backbone")
        engine.check_fingerprint(meta, directory)
        return method

    @staticmethod
    def load_onto(engine: "ServeEngine", directory: Path):
        """The artifact's model on the engine's backbone (a backbone mismatch found on loading is a conflict)."""
        from ..artifact import load
        from ..methods import Method

        try:
            model = load(directory, backbone=engine.backbone)
        except ArtifactError as e:
            if "trained on" in e.what:
                raise TaskConflictError(e.what, where=e.where, fix=e.fix) from None
            raise
        m = model.method
        if (type(m).embed is not Method.embed or getattr(m, "model_inputs", None) is not None
                or (m.prefix_kv(engine.backbone) is not None and m.soft is not None)):
            raise TaskConflictError(f"method {m.name!r} builds its inputs in its own way, which a mixed batch cannot carry",
                                    where=str(directory), fix="serve it alone with prompttune.load()")
        return model

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "operations": sorted(self.operations), "path": str(self.directory)}


TASK_KINDS: dict[str, type[ServedTask]] = {}


def register_task_kind(cls: type[ServedTask]) -> type[ServedTask]:
    TASK_KINDS[cls.kind] = cls
    return cls


def _pad_right(t: torch.Tensor, width: int, value) -> torch.Tensor:
    if t.shape[1] == width:
        return t
    return torch.cat([t, torch.full((t.shape[0], width - t.shape[1]), value, dtype=t.dtype)], dim=1)


# Methods that leave the backbone frozen and whose prompt is the input embeddings (soft rows written over placeholder
# tokens), or keys/values in front of every attention layer (prefix): what a shared backbone can carry per row or per
# task. Another method is refused, never served wrongly.
SERVABLE_METHODS = frozenset({"zero-shot", "soft-prompt", "prefix"})


@register_task_kind
class ClassificationTask(ServedTask):
    """A classification artifact (template + verbalizer + frozen-backbone method) on the shared backbone."""

    kind = "classification"
    operations = frozenset({"predict"})

    def __init__(self, name, directory, meta, pm, engine: "ServeEngine"):
        super().__init__(name, directory, meta)
        self.pm = pm
        self.labels = list(pm.labels)
        self.fields = list(pm.template.fields)
        with torch.no_grad():
            self.table = pm.method.soft().detach() if pm.method.soft is not None else None  # P-tuning encoders run once here
        self.word_tokens: list[list[int]] = [list(w) for w in pm.word_ids]
        self.word_class = pm.word_class.clone()
        self.fast = bool(pm.fast)
        self.prefix_ids: list[int] = []
        self.prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.deep = pm.method.prefix_kv(pm.backbone) is not None
        # An encoder + head task's classification head lives in the backbone: the head trained with its prompt (or
        # the model's own, for an untrained method) is kept here and put in place for this task's forward.
        self.head: dict[str, torch.Tensor] | None = None
        if engine.backbone.family.name == "encoder-head":
            own = {k: v.detach().clone() for k, v in pm.method._head.items()}
            self.head = {k: own.get(k, v) for k, v in engine.base_head.items()}
        self.own_forward = self.deep or self.head is not None
        if engine.prefix_cache and engine.backbone.family.name == "causal-lm" and not self.deep:
            self._build_prefix_cache(engine)

    @classmethod
    def load(cls, engine, name, directory, meta):
        cls.check_shareable(engine, directory, meta)
        bb = engine.backbone
        if bb.family.name == "encoder-head":
            want = len(meta.get("verbalizer", {}).get("words", {}))
            n_out = bb.model.config.num_labels
            if want != n_out:
                raise TaskConflictError(f"this artifact has {want} labels, the server's classification head has {n_out}",
                                        where=str(directory), fix="serve encoder + head artifacts with the same number of labels together")
        return cls(name, directory, meta, cls.load_onto(engine, directory), engine)

    # ---- prompt cache --------------------------------------------------------------------------
    def _build_prefix_cache(self, engine: "ServeEngine") -> None:
        """Find the tokens every input of this task starts with (by rendering very different probes), and
        compute the backbone's keys/values for them once."""
        probes = ["a", "The", "0", "zq", "Hello, world.", "\n", "?", "x y z"]
        rendered = [self.pm.renderer.render({f: p for f in self.fields}, reserve=self.pm.reserve) for p in probes]
        common = list(rendered[0].ids)
        for r in rendered[1:]:
            n = 0
            while n < min(len(common), len(r.ids)) and common[n] == r.ids[n]:
                n += 1
            common = common[:n]
        # The position before the mask reads the first label token: it (and anything after) must be computed per row.
        limit = min((r.mask if r.mask is not None else len(r.ids)) for r in rendered) - 1
        common = common[: max(limit, 0)]
        if not common:
            return
        soft = rendered[0].soft[: len(common)]
        bb = engine.backbone
        with torch.no_grad():
            ids = torch.tensor([common], device=engine.device)
            emb = engine.embed(ids, torch.tensor([soft], device=engine.device), self.table)
            out = bb.model.base_model(inputs_embeds=emb, attention_mask=torch.ones_like(ids),
                                      position_ids=torch.arange(len(common), device=engine.device)[None], use_cache=True)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        if cache is None or not hasattr(cache, "layers"):
            log.warning("task %s: the backbone returned no per-layer cache; prompt caching is off for it", self.name)
            return
        self.prefix_kv = [(layer.keys.detach().clone(), layer.values.detach().clone()) for layer in cache.layers]
        self.prefix_ids = common

    def prefix_len(self, r: Rendered) -> int:
        P = len(self.prefix_ids)
        if self.prefix_kv is None or r.mask is None or r.mask - 1 < P or r.ids[:P] != self.prefix_ids:
            return 0
        return P

    # ---- inputs --------------------------------------------------------------------------------
    def make_jobs(self, operation, inputs, **options):
        if operation not in self.operations:
            raise self.unsupported(operation)
        if options:
            raise ConfigError(f"predict takes no options, got {sorted(options)}", where="request", fix="drop them")
        return [self.pm.renderer.render(self.as_row(x, i), reserve=self.pm.reserve) for i, x in enumerate(inputs)]

    def format_result(self, operation, raw):
        return format_prediction(self, raw)

    def describe(self):
        m = self.meta
        return {**super().describe(), "labels": self.labels, "fields": self.fields, "template": m.get("template"),
                "method": m.get("method"), "verbalizer": m.get("verbalizer", {}).get("words"),
                "calibrated": m.get("verbalizer", {}).get("calibration") is not None,
                "soft_tokens": 0 if self.table is None else int(self.table.shape[0]),
                "trainable_parameters": m.get("trainable_parameters"), "metrics": m.get("metrics"),
                "backbone": m.get("backbone", {}).get("name"), "created": m.get("created"),
                "cached_prefix_tokens": len(self.prefix_ids) if self.prefix_kv is not None else 0}

    # ---- batch ---------------------------------------------------------------------------------
    @classmethod
    def run_batch(cls, engine, jobs):
        """Class log-probabilities for every job; rows on the fast path share one forward, rows needing
        likelihood scoring share another."""
        out: list[Any] = [None] * len(jobs)
        for t in {j.task.name: j.task for j in jobs if j.task.own_forward}.values():
            idx = [i for i, j in enumerate(jobs) if j.task is t]
            rows = engine.backbone.family.build([jobs[i].payload for i in idx], t.word_tokens, fast=t.fast, padding_side="right")
            engine.stats.forward(rows=rows.input_ids.shape[0], computed=int(rows.attention_mask.sum()), reused=0)
            if t.head is not None:
                engine.put_head(t.head)
            with torch.no_grad():
                logp = t.pm(rows).float().cpu()  # sets this task's prefix (if any) in the backbone's attention
            for k, i in enumerate(idx):
                out[i] = logp[k]
        for fast in (True, False):
            idx = [i for i, j in enumerate(jobs) if j.task.fast == fast and not j.task.own_forward]
            if idx:
                for i, res in zip(idx, cls._forward([jobs[i] for i in idx], engine, fast=fast)):
                    out[i] = res
        return out

    @classmethod
    def _forward(cls, jobs: list[Job], engine: "ServeEngine", *, fast: bool) -> list[torch.Tensor]:
        bb = engine.backbone
        bb.set_prefix(None)  # a deep-prompt task may have left its prefix in the attention layers
        fam = bb.family
        use_cache = engine.prefix_cache and fam.name == "causal-lm"
        # Group rows by task (stable), remembering where each job's rows land.
        tasks: dict[str, ClassificationTask] = {}
        per_task: dict[str, list[int]] = {}
        for i, j in enumerate(jobs):
            tasks.setdefault(j.task.name, j.task)
            per_task.setdefault(j.task.name, []).append(i)
        union: list[int] = []
        if fast:
            union = sorted({w[0] for t in tasks.values() for w in t.word_tokens})
        parts: list[Rows] = []
        prefix: list[int] = []  # per model row: cached prefix tokens
        row_task: list[ClassificationTask] = []
        offsets: dict[str, int] = {}
        tables = []
        n_soft = 0
        for name, idx in per_task.items():
            t = tasks[name]
            rendered = [jobs[i].payload for i in idx]
            plen = [t.prefix_len(r) for r in rendered] if use_cache else [0] * len(rendered)
            cut = [Rendered(r.ids[p:], r.soft[p:], r.mask - p if r.mask is not None else None) for r, p in zip(rendered, plen)]
            rows = fam.build(cut, t.word_tokens, fast=fast, padding_side="right")
            reps = rows.input_ids.shape[0] // len(rendered)  # likelihood rows: one per (example, word)
            prefix += [p for p in plen for _ in range(reps)]
            row_task += [t] * rows.input_ids.shape[0]
            if t.table is not None:
                offsets[name] = n_soft
                tables.append(t.table)
                n_soft += t.table.shape[0]
                rows.soft_index = torch.where(rows.soft_index >= 0, rows.soft_index + offsets[name], rows.soft_index)
            parts.append(rows)
        merged = _merge_rows(parts, pad_id=fam.pad_id, union=union)
        table = torch.cat(tables) if tables else None
        merged.to(engine.device)
        embeds = engine.embed(merged.input_ids, merged.soft_index, table)
        engine.stats.forward(rows=merged.input_ids.shape[0], computed=int(merged.attention_mask.sum()), reused=sum(prefix))
        if use_cache:
            scores = _causal_scores_cached(engine, embeds, merged, prefix, row_task)
        else:
            scores = fam.word_scores(embeds, merged)  # fast: (R, |union|); likelihood: (R, 1)
        results: list[torch.Tensor] = [None] * len(jobs)  # type: ignore[list-item]
        start = 0
        for name, idx in per_task.items():
            t = tasks[name]
            n = len(idx)
            if fast:
                cols = torch.tensor([union.index(w[0]) for w in t.word_tokens], device=scores.device)
                s = scores[start:start + n][:, cols]
                start += n
            else:
                W = len(t.word_tokens)
                s = scores[start:start + n * W].reshape(n, W)
                start += n * W
            logp = t.pm.verbalizer.class_log_probs(s.float(), t.word_class.to(s.device)).cpu()
            for k, i in enumerate(idx):
                results[i] = logp[k]
        return results


def _merge_rows(parts: list[Rows], *, pad_id: int, union: list[int]) -> Rows:
    """Concatenate right-padded Rows of several tasks into one batch (positions stay valid with right padding)."""
    T = max(p.input_ids.shape[1] for p in parts)
    cat = lambda name, value, width=T: torch.cat([_pad_right(getattr(p, name), width, value) for p in parts])  # noqa: E731
    R = sum(p.input_ids.shape[0] for p in parts)
    out = Rows(cat("input_ids", pad_id), cat("soft_index", -1), cat("attention_mask", 0), R)
    if union:
        out.read_pos = torch.cat([p.read_pos for p in parts])
        out.word_ids = torch.tensor(union)
    else:
        L = max(p.target_pos.shape[1] for p in parts)
        out.target_pos = cat("target_pos", -1, L)
        out.target_ids = cat("target_ids", -100, L)
    if parts[0].decoder_input_ids is not None:
        Td = max(p.decoder_input_ids.shape[1] for p in parts)
        out.decoder_input_ids = cat("decoder_input_ids", pad_id, Td)
        out.decoder_attention_mask = cat("decoder_attention_mask", 0, Td)
    return out


def _causal_scores_cached(engine: "ServeEngine", embeds: torch.Tensor, rows: Rows, prefix: list[int],
                          row_task: list[ClassificationTask]) -> torch.Tensor:
    """Causal-LM word scores with each row's cached prompt prefix as past keys/values.

    The cache holds P = max prefix positions; a row with a shorter (or no) prefix has its prefix left-padded
    and masked out. Keys were computed at positions 0..p-1, and the row's own tokens continue at p."""
    from transformers import DynamicCache

    bb = engine.backbone
    fam = bb.family
    dev = embeds.device
    B = embeds.shape[0]
    P = max(prefix, default=0)
    plen = torch.tensor(prefix, device=dev)
    att = rows.attention_mask
    position_ids = (plen[:, None] + att.cumsum(-1) - 1).clamp_min(0)
    kw = dict(inputs_embeds=embeds, position_ids=position_ids, use_cache=P > 0)
    if P > 0:
        ref = next(t.prefix_kv for t, p in zip(row_task, prefix) if p)
        layers = []
        for li, (k0, v0) in enumerate(ref):
            k = k0.new_zeros(B, k0.shape[1], P, k0.shape[3])
            v = v0.new_zeros(B, v0.shape[1], P, v0.shape[3])
            for i, (t, p) in enumerate(zip(row_task, prefix)):
                if p:
                    k[i, :, P - p:] = t.prefix_kv[li][0][0, :, :p]
                    v[i, :, P - p:] = t.prefix_kv[li][1][0, :, :p]
            layers.append((k, v))
        cache = DynamicCache(config=bb.model.config)
        for li, (k, v) in enumerate(layers):
            cache.update(k, v, li)
        ar = torch.arange(P, device=dev)
        prefix_mask = (ar[None, :] >= (P - plen)[:, None]).to(att.dtype)
        kw.update({_cache_kwarg(bb.model.base_model): cache}, attention_mask=torch.cat([prefix_mask, att], dim=1))
    else:
        kw["attention_mask"] = att
    hidden = bb.model.base_model(**kw).last_hidden_state
    head = bb.model.get_output_embeddings()
    bias = getattr(head, "bias", None)
    if rows.read_pos is not None:
        h = hidden[torch.arange(B, device=dev), rows.read_pos]
        logits = F.linear(h, head.weight[rows.word_ids], None if bias is None else bias[rows.word_ids])
        return fam._postprocess(logits.float())
    h = hidden[torch.arange(B, device=dev)[:, None], rows.target_pos.clamp_min(0)]
    logits = fam._postprocess(head(h))
    return fam._general_scores(logits, rows, gathered=True)


def _cache_kwarg(model) -> str:
    """transformers 5.x renamed ``past_key_values`` to ``cache`` in some releases; use whichever forward takes."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


# ------------------------------------------------------------------------------------------------
# Requests, stats, the engine
# ------------------------------------------------------------------------------------------------
@dataclass
class _Request:
    future: Future
    n: int
    results: list = field(default_factory=list)
    done: int = 0
    failed: bool = False
    enqueued: float = field(default_factory=time.perf_counter)

    def __post_init__(self):
        self.results = [None] * self.n

    def set(self, index: int, value) -> None:
        if self.failed:
            return
        self.results[index] = value
        self.done += 1
        if self.done == self.n:
            self.future.set_result(self.results)

    def fail(self, exc: BaseException) -> None:
        if not self.failed and not self.future.done():
            self.failed = True
            self.future.set_exception(exc)


BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class EngineStats:
    """Counters for /metrics and the benchmark (thread-safe)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.batches = 0
        self.batch_inputs = 0
        self.batch_hist = {b: 0 for b in BATCH_BUCKETS}
        self.forwards = 0
        self.model_rows = 0
        self.tokens_computed = 0
        self.prefix_tokens_reused = 0
        self.inputs_by_task: dict[str, int] = {}

    def batch(self, jobs: list[Job]) -> None:
        with self.lock:
            self.batches += 1
            self.batch_inputs += len(jobs)
            for b in BATCH_BUCKETS:
                if len(jobs) <= b:
                    self.batch_hist[b] += 1
            for j in jobs:
                self.inputs_by_task[j.task.name] = self.inputs_by_task.get(j.task.name, 0) + 1

    def forward(self, *, rows: int, computed: int, reused: int) -> None:
        with self.lock:
            self.forwards += 1
            self.model_rows += rows
            self.tokens_computed += computed
            self.prefix_tokens_reused += reused

    def summary(self) -> str:
        s = self.snapshot()
        total = s["tokens_computed"] + s["prefix_tokens_reused"]
        share = f" ({100 * s['prefix_tokens_reused'] / total:.1f}%)" if total else ""
        mean = s["batch_inputs"] / s["batches"] if s["batches"] else 0.0
        return (f"{s['batch_inputs']} inputs in {s['batches']} batches (mean {mean:.1f}), {s['forwards']} forward passes; "
                f"prompt cache: {s['prefix_tokens_reused']} of {total} tokens reused instead of computed{share}")

    def snapshot(self) -> dict:
        with self.lock:
            return {"batches": self.batches, "batch_inputs": self.batch_inputs, "batch_hist": dict(self.batch_hist),
                    "forwards": self.forwards, "model_rows": self.model_rows, "tokens_computed": self.tokens_computed,
                    "prefix_tokens_reused": self.prefix_tokens_reused, "inputs_by_task": dict(self.inputs_by_task)}


class ServeEngine:
    """One frozen backbone, any number of tasks; batched, queued inference.

    ::

        engine = ServeEngine.from_artifacts(["runs/sst", "runs/topic"], max_batch=32, max_wait_ms=5)
        engine.predict("sst", ["A triumph.", "Dull."])
        engine.predict_mixed([("sst", "A triumph."), ("topic", "Shares fell sharply.")])  # one forward pass
        engine.generate("headlines", ["The article ..."], max_new_tokens=24)                 # a generation artifact
        engine.close()
    """

    def __init__(self, backbone: Backbone, *, max_batch: int = 32, max_wait_ms: float = 5.0, max_queue: int = 1024,
                 prefix_cache: bool = True, start: bool = True):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ConfigError("max_batch and max_queue must be >= 1 and max_wait_ms >= 0", where="serve",
                              fix="e.g. --max-batch 32 --max-wait-ms 5 --max-queue 1024")
        self.backbone = backbone
        backbone.freeze()
        backbone.model.eval()
        self.fingerprint = backbone.fingerprint()
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.max_queue = int(max_queue)
        self.prefix_cache = bool(prefix_cache)
        # an encoder + head backbone's own classification head, as loaded (artifacts overwrite it when they load theirs)
        self.base_head = {k: v.detach().clone() for k, v in backbone.head_parameters().items()} \
            if backbone.family.name == "encoder-head" else {}
        self.stats = EngineStats()
        self._tasks: dict[str, ServedTask] = {}
        self._tasks_lock = threading.Lock()
        self._forward_lock = threading.Lock()
        self._render_lock = threading.Lock()  # a fast tokenizer may not be entered from two threads at once
        self._queue: deque[Job] = deque()
        self._cv = threading.Condition()
        self._stop = False
        self._worker: threading.Thread | None = None
        if start:
            self.start()

    @classmethod
    def from_artifacts(cls, directories: Sequence, *, names: Sequence[str] | None = None, **kw) -> "ServeEngine":
        """Load the backbone named by the first artifact once, then every artifact onto it."""
        if not directories:
            raise ConfigError("no artifacts to serve", where="serve", fix="give one or more artifact directories")
        meta = read_meta(directories[0])
        b = meta["backbone"]
        if meta.get("trained_backbone"):
            raise TaskConflictError("the first artifact carries its own fine-tuned backbone, so nothing can share it",
                                    where=str(directories[0]), fix="serve soft-prompt / zero-shot artifacts, or serve it alone")
        backbone = Backbone.load(b["name"], family=b.get("family"), dtype=b.get("dtype", "float32"), revision=b.get("revision"),
                                 num_labels=len(meta["verbalizer"]["words"]) if b.get("family") == "encoder-head" else None)
        engine = cls(backbone, **kw)
        try:
            for k, d in enumerate(directories):
                engine.add(d, name=names[k] if names else None)
        except BaseException:
            engine.close()
            raise
        return engine

    # ---- tasks ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.backbone.model.get_input_embeddings().weight.device

    @property
    def tasks(self) -> dict[str, ServedTask]:
        with self._tasks_lock:
            return dict(self._tasks)

    def task(self, name: str) -> ServedTask:
        with self._tasks_lock:
            t = self._tasks.get(name)
        if t is None:
            raise UnknownTaskError(f"no task named {name!r}", where="task",
                                   fix=f"use one of: {', '.join(sorted(self.tasks)) or '(none loaded)'}")
        return t

    def check_fingerprint(self, meta: dict, directory) -> None:
        want = meta.get("backbone", {}).get("fingerprint")
        if want and want != self.fingerprint:
            raise TaskConflictError(f"this prompt was trained on {meta['backbone'].get('name')!r} (fingerprint {want}), but the server's "
                                    f"backbone is {self.backbone.name!r} (fingerprint {self.fingerprint})", where=str(directory),
                                    fix="serve it with a server started on the model it was trained on")

    def add(self, directory, *, name: str | None = None) -> ServedTask:
        """Load an artifact onto the shared backbone as a task (refused if trained on another backbone)."""
        d = Path(directory)
        meta = read_meta(d)
        name = name or d.resolve().name
        if not _TASK_NAME.match(name):
            raise ConfigError(f"task name {name!r} is not usable in a URL", where="task name",
                              fix="use letters, digits, '.', '_' or '-' (at most 64)")
        with self._tasks_lock:
            if name in self._tasks:
                raise TaskConflictError(f"a task named {name!r} is already loaded", where=str(d),
                                        fix="remove it first, or give this one another name")
        kind = meta.get("task", "classification")
        kcls = TASK_KINDS.get(kind)
        if kcls is None:
            raise UnsupportedError(f"artifacts of kind {kind!r} cannot be served by this version (it serves: {', '.join(TASK_KINDS)})",
                                   where=str(d), implemented=False, fix="upgrade prompttune, or serve a classification artifact")
        with self._forward_lock, self._render_lock:  # the prefix cache renders probes and runs the backbone
            task = kcls.load(self, name, d, meta)
        with self._tasks_lock:
            if name in self._tasks:
                raise TaskConflictError(f"a task named {name!r} is already loaded", where=str(d), fix="give it another name")
            self._tasks[name] = task
        log.info("serving %s (%s) from %s", name, kind, d)
        return task

    def remove(self, name: str) -> None:
        """Unload a task; its requests still queued fail with UnknownTaskError."""
        with self._tasks_lock:
            if self._tasks.pop(name, None) is None:
                raise UnknownTaskError(f"no task named {name!r}", where="task", fix="list the tasks to see their names")

    # ---- requests ------------------------------------------------------------------------------
    def submit(self, task: str, inputs: Sequence[Any], *, operation: str = "predict", **options) -> Future:
        """Queue inputs of one task; the Future resolves to one raw result per input (class log-probs for
        classification). Bad input raises here; a full queue raises OverloadedError."""
        if isinstance(inputs, (str, Mapping)):
            inputs = [inputs]
        return self.submit_many([(task, list(inputs))], operation=operation, **options)[0]

    def submit_many(self, requests: Sequence[tuple[str, Sequence[Any]]], *, operation: str = "predict", **options) -> list[Future]:
        """Queue several (task, inputs) requests at once: all are accepted or none (a full queue, a bad input)."""
        prepared = []
        with self._render_lock:
            for task, inputs in requests:
                t = self.task(task)
                prepared.append((t, t.make_jobs(operation, list(inputs), **options)))
        futures = []
        with self._cv:
            if self._stop:
                raise OverloadedError("the engine is shut down", retry_after=5.0, fix="retry against a running server")
            n = sum(len(p) for _, p in prepared)
            if len(self._queue) + n > self.max_queue:
                raise OverloadedError(f"the queue is full ({len(self._queue)} inputs waiting, {n} more asked, limit {self.max_queue})",
                                      retry_after=max(1.0, self.max_wait * 2), fix="retry after the Retry-After delay")
            for t, payloads in prepared:
                fut: Future = Future()
                futures.append(fut)
                if not payloads:
                    fut.set_result([])
                    continue
                req = _Request(fut, len(payloads))
                for i, p in enumerate(payloads):
                    self._queue.append(Job(t, p, req, i))
            self._cv.notify()
        return futures

    def predict(self, task: str, inputs, *, timeout: float | None = None) -> list[dict]:
        """Labels with per-class probabilities, as PromptModel.predict returns them."""
        t = self.task(task)
        return [t.format_result("predict", lp) for lp in self.submit(task, inputs).result(timeout)]

    def predict_mixed(self, items: Iterable[tuple[str, Any]]) -> list[dict]:
        """Run (task, input) pairs now as one batch (bypassing the queue); results in order."""
        jobs = self._direct_jobs(items)
        with self._forward_lock:
            out = self._run_kinds(jobs)
        return [j.task.format_result("predict", r) for j, r in zip(jobs, out)]

    def log_probs_mixed(self, items: Iterable[tuple[str, Any]]) -> list[torch.Tensor]:
        """Class log-probabilities of (task, input) pairs, run now as one batch."""
        jobs = self._direct_jobs(items)
        with self._forward_lock:
            return self._run_kinds(jobs)

    def generate(self, task: str, inputs, *, timeout: float | None = None, **options) -> list[str]:
        """Generated text per input of a generation task; ``options`` override the artifact's decoding settings
        (max_new_tokens, num_beams, do_sample, temperature, top_k, top_p, repetition_penalty, stop, seed)."""
        t = self.task(task)
        return [t.format_result("generate", r)["text"] for r in self.submit(task, inputs, operation="generate", **options).result(timeout)]

    def generate_mixed(self, items: Iterable[tuple[str, Any]], **options) -> list[str]:
        """Run (task, input) pairs of generation tasks now as one batch (bypassing the queue); texts in order."""
        jobs = self._direct_jobs(items, "generate", **options)
        with self._forward_lock:
            return self._run_kinds(jobs)

    def _direct_jobs(self, items, operation: str = "predict", **options) -> list[Job]:
        jobs = []
        with self._render_lock:
            for name, x in items:
                t = self.task(name)
                jobs.append(Job(t, t.make_jobs(operation, [x], **options)[0], None, 0))  # type: ignore[arg-type]
        return jobs

    def queue_depth(self) -> int:
        with self._cv:
            return len(self._queue)

    # ---- the worker ----------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor, soft_index: torch.Tensor, table: torch.Tensor | None) -> torch.Tensor:
        embeds = self.backbone.embed(input_ids)
        if table is not None:
            table = table.to(device=embeds.device, dtype=embeds.dtype)
            embeds = torch.where((soft_index >= 0)[..., None], table[soft_index.clamp_min(0)], embeds)
        return embeds

    def put_head(self, head: Mapping[str, torch.Tensor]) -> None:
        """Put a task's classification head into the backbone (under the forward lock)."""
        params = self.backbone.head_parameters()
        with torch.no_grad():
            for k, v in head.items():
                params[k].copy_(v)

    def _run_kinds(self, jobs: list[Job]) -> list[Any]:
        out: list[Any] = [None] * len(jobs)
        by_kind: dict[type, list[int]] = {}
        for i, j in enumerate(jobs):
            by_kind.setdefault(type(j.task), []).append(i)
        with torch.inference_mode():
            for kcls, idx in by_kind.items():
                for i, r in zip(idx, kcls.run_batch(self, [jobs[i] for i in idx])):
                    out[i] = r
        return out

    def start(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._stop = False
            self._worker = threading.Thread(target=self._loop, name="prompttune-serve", daemon=True)
            self._worker.start()

    def close(self) -> None:
        with self._cv:
            self._stop = True
            pending = list(self._queue)
            self._queue.clear()
            self._cv.notify_all()
        for j in pending:
            j.request.fail(OverloadedError("the engine shut down before this request ran", retry_after=5.0))
        if self._worker is not None:
            self._worker.join(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _take_batch(self) -> list[Job] | None:
        with self._cv:
            while not self._queue and not self._stop:
                self._cv.wait()
            if self._stop:
                return None
            deadline = self._queue[0].request.enqueued + self.max_wait
            while len(self._queue) < self.max_batch and not self._stop:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cv.wait(left)
            return [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            live = self.tasks
            runnable = []
            for j in batch:
                if live.get(j.task.name) is not j.task:
                    j.request.fail(UnknownTaskError(f"task {j.task.name!r} was removed before this request ran", where="task",
                                                    fix="send it to a task that is loaded"))
                else:
                    runnable.append(j)
            runnable = [j for j in runnable if not j.request.failed]
            if not runnable:
                continue
            self.stats.batch(runnable)
            try:
                with self._forward_lock:
                    results = self._run_kinds(runnable)
            except Exception as e:  # one bad batch must not kill the worker
                log.exception("batch failed")
                for j in runnable:
                    j.request.fail(e)
                continue
            for j, r in zip(runnable, results):
                j.request.set(j.index, r)


def format_prediction(task: ServedTask, log_probs: torch.Tensor) -> dict:
    p = log_probs.exp()
    labels = task.labels  # type: ignore[attr-defined]
    return {"label": labels[int(p.argmax())], "probabilities": {l: round(float(v), 6) for l, v in zip(labels, p)}}
