"""Task kinds of the serving engine: what a loaded artifact is to the server, registered by the artifact's task.

A kind implements::

    @register_task_kind
    class SomeTask(ServedTask):
        kind = "..."                             # prompt.json "task" (a type registered in prompttune.tasks)
        operations = frozenset({"..."})          # POST /v1/tasks/{task}/<operation> routes here
        @classmethod
        def load(cls, engine, name, directory, meta): ...      # onto engine.backbone; refuse what cannot share it
        def make_jobs(self, operation, inputs, **options): ...  # validate + render, in the caller's thread
        @classmethod
        def run_batch(cls, engine, jobs): ...                    # one result per job, computed together
        def format_result(self, operation, raw): ...             # JSON-ready answer for one input
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence

import torch

from ..backbone.family import PromptCache
from ..errors import ArtifactError, TemplateError, check_input_texts
from ..template import AUDIO_FIELD, Rendered
from .errors import TaskConflictError, UnsupportedError

if TYPE_CHECKING:
    from .engine import ServeEngine, PendingRequest

log = logging.getLogger(__name__)

# Very different inputs: the tokens all of them render to first are what every input of a task starts with.
_PROBES = ["a", "The", "0", "zq", "Hello, world.", "\n", "?", "x y z"]


@dataclass
class Job:
    """One input of one request, rendered and waiting for its batch."""

    task: "ServedTask"
    payload: Any
    request: "PendingRequest"
    index: int


class ServedTask:
    """A loaded artifact the engine serves. Subclasses register a ``kind`` (the artifact's ``task`` field)."""

    kind: ClassVar[str]
    operations: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, name: str, directory: Path, meta: dict, family=None):
        self.name = name
        self.directory = directory
        self.meta = meta
        self.speech = family if family is not None and family.hears else None  # the speech family ({audio} comes as a clip), else None
        self.prefix_ids: list[int] = []  # the prompt cache: the tokens every input starts with ...
        self.prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # ... and their keys/values per layer
        self._cacheable: Callable[[Rendered], int] = len

    # ---- the prompt cache ----------------------------------------------------------------------
    def build_prompt_cache(self, engine: "ServeEngine", render: Callable[[dict], Rendered], table: torch.Tensor | None,
                           cacheable: Callable[[Rendered], int]) -> None:
        """Find the tokens every input of this task starts with (by rendering very different probes with ``render``)
        and run them through the backbone once; their keys/values then stand in for those tokens in every row.
        ``cacheable(r)``: how many of a rendered input's first tokens may come from the cache (the rest, at least
        what the output is read from, is computed per row). A shared part shorter than the engine's
        ``prompt_cache_min_tokens`` is not cached: copying its keys/values into a batch would cost more than the
        tokens it saves (``benchmarks/prompt_cache.py`` measures the break-even)."""
        rendered = [render({f: p for f in self.fields}) for p in _PROBES]
        common = list(rendered[0].ids)
        for r in rendered[1:]:
            n = 0
            while n < min(len(common), len(r.ids)) and common[n] == r.ids[n]:
                n += 1
            common = common[:n]
        common = common[: max(min(cacheable(r) for r in rendered), 0)]
        if len(common) < max(engine.prompt_cache_min_tokens, 1):
            return
        bb = engine.backbone
        with torch.no_grad():
            ids = torch.tensor([common], device=engine.device)
            kv = bb.family.prompt_kv(bb.embed(ids, torch.tensor([rendered[0].soft[: len(common)]], device=engine.device), table))
        if kv is None:
            log.warning("task %s: the backbone returned no per-layer cache; prompt caching is off for it", self.name)
            return
        self.prefix_kv, self.prefix_ids, self._cacheable = kv, common, cacheable

    def prefix_len(self, r: Rendered) -> int:
        """How many first tokens of ``r`` the prompt cache supplies (0: none, e.g. text that does not start with them)."""
        P = len(self.prefix_ids)
        if self.prefix_kv is None or self._cacheable(r) < P or r.ids[:P] != self.prefix_ids:
            return 0
        return P

    @staticmethod
    def cut(r: Rendered, p: int) -> Rendered:
        """``r`` without its first ``p`` tokens (those the cache supplies)."""
        return r if not p else Rendered(r.ids[p:], r.soft[p:], r.mask - p if r.mask is not None else None, audio=r.audio)

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
        where = "input" if index is None else f"inputs[{index}]"
        row = self._as_row(x, where)
        if self.speech is not None and AUDIO_FIELD in row:
            row[AUDIO_FIELD] = self.speech.served_audio(row[AUDIO_FIELD], f"{where}, field {AUDIO_FIELD!r}")
        return row

    def _as_row(self, x, where: str) -> dict:
        check_input_texts(x, where)
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
        """Refuse an artifact that cannot share the engine's frozen backbone (the method says whether it can);
        returns its method name."""
        from ..methods import METHODS

        bb = engine.backbone
        method = meta.get("method", {}).get("name")
        mcls = METHODS.get(method)
        if meta.get("trained_backbone") or (mcls is not None and mcls.trains_backbone):
            raise TaskConflictError(f"method {method!r} trains the backbone's own weights, so this artifact carries its own "
                                    "model and cannot share the frozen backbone", where=str(directory),
                                    fix="serve it with a separate `prompttune serve` process, or train a soft-prompt artifact")
        if mcls is None or not mcls.servable:
            servable = sorted(n for n, m in METHODS.items() if m.servable)
            raise TaskConflictError(f"method {method!r} is not supported by the serving engine (it serves "
                                    f"{', '.join(servable)} artifacts on a frozen backbone)",
                                    where=str(directory), fix="load it with prompttune.load() and call predict, or serve it alone")
        family = meta.get("backbone", {}).get("family")
        if family and not bb.is_family(family):
            raise TaskConflictError(f"this artifact was trained on a {family} model, the server's backbone is a {bb.family.name}",
                                    where=str(directory), fix="serve it with a server started on its own backbone")
        engine.check_fingerprint(meta, directory)
        return method

    @staticmethod
    def load_onto(engine: "ServeEngine", directory: Path):
        """The artifact's model on the engine's backbone (a backbone mismatch found on loading is a conflict)."""
        from ..artifact import load

        try:
            model = load(directory, backbone=engine.backbone)
        except ArtifactError as e:
            if "trained on" in e.what:
                raise TaskConflictError(e.what, where=e.where, fix=e.fix) from None
            raise
        m = model.method
        if not m.shares_batch and m.soft_table(engine.backbone) is not None:  # a prefix and soft rows: one forward cannot carry both
            raise TaskConflictError(f"method {m.name!r} builds its inputs in its own way, which a mixed batch cannot carry",
                                    where=str(directory), fix="serve it alone with prompttune.load()")
        return model

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "operations": sorted(self.operations), "path": str(self.directory),
                "cached_prefix_tokens": len(self.prefix_ids) if self.prefix_kv is not None else 0,
                "audio_field": AUDIO_FIELD if self.speech is not None else None}  # the field that takes a base64 clip


def length_groups(lengths: Sequence[int], overhead: float) -> list[list[int]]:
    """Indices of one batch cut into groups of similar length, each run as its own forward: a forward costs about
    ``overhead`` + rows x longest row (in tokens; padding is paid like real tokens), and the cut minimises the sum
    (dynamic programming over the lengths sorted longest first). A mixed batch of short and long inputs splits
    where the padding saved is worth more than one more forward; ``overhead`` <= 0 keeps one group."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if overhead <= 0 or len(order) < 2:
        return [order] if order else []
    L = [lengths[i] for i in order]
    n = len(L)
    best = [0.0] + [float("inf")] * n  # best[j]: the cheapest cut of the j longest
    cut_at = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            c = best[i] + overhead + (j - i) * L[i]
            if c < best[j]:
                best[j], cut_at[j] = c, i
    groups = []
    j = n
    while j > 0:
        groups.append(order[cut_at[j]:j])
        j = cut_at[j]
    return groups[::-1]


def row_cache(prefix: list[int], row_task: list[ServedTask], device) -> PromptCache | None:
    """Each row's cached prompt as past keys/values: the cache holds P = max(prefix) positions; a row with a shorter
    (or no) prefix has its own right-aligned and the rest masked out (its keys were computed at positions 0..p-1).
    One copy per run of rows of the same task, not one per row."""
    P = max(prefix, default=0)
    if P == 0:
        return None
    ref = next(t.prefix_kv for t, p in zip(row_task, prefix) if p)
    runs = []
    r = 0
    for (_, p), grp in itertools.groupby(zip(row_task, prefix), key=lambda x: (id(x[0]), x[1])):
        n = len(list(grp))
        if p:
            runs.append((r, n, p, row_task[r]))
        r += n
    layers = []
    for li, (k0, v0) in enumerate(ref):
        k = k0.new_zeros(len(prefix), k0.shape[1], P, k0.shape[3])
        v = v0.new_zeros(len(prefix), v0.shape[1], P, v0.shape[3])
        for r, n, p, t in runs:
            k[r:r + n, :, P - p:] = t.prefix_kv[li][0][:, :, :p]
            v[r:r + n, :, P - p:] = t.prefix_kv[li][1][:, :, :p]
        layers.append((k, v))
    return PromptCache(layers, torch.tensor(prefix, device=device))


TASK_KINDS: dict[str, type[ServedTask]] = {}


def register_task_kind(cls: type[ServedTask]) -> type[ServedTask]:
    TASK_KINDS[cls.kind] = cls
    return cls
