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

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

from ..errors import ArtifactError, TemplateError, check_input_texts
from .errors import TaskConflictError, UnsupportedError

if TYPE_CHECKING:
    from .engine import ServeEngine, PendingRequest


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
        """Refuse an artifact that cannot share the engine's frozen backbone (the method says whether it can);
        returns its method name."""
        from ..methods import METHODS

        bb = engine.backbone
        if bb.family.hears:
            raise TaskConflictError(f"the serving engine does not serve speech models yet ({bb.name!r} is a {bb.family.name}): "
                                    "requests carry text, not audio", where=str(directory),
                                    fix="load the artifact with prompttune.load() and call predict / generate on clips")
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
        return {"name": self.name, "kind": self.kind, "operations": sorted(self.operations), "path": str(self.directory)}


TASK_KINDS: dict[str, type[ServedTask]] = {}


def register_task_kind(cls: type[ServedTask]) -> type[ServedTask]:
    TASK_KINDS[cls.kind] = cls
    return cls
