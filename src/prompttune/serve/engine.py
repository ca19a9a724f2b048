"""The inference engine: one frozen backbone, many tuned prompts, requests from different tasks in one batch.

Each loaded artifact is a *task* of a registered kind (:mod:`prompttune.serve.tasks`: classification in
:mod:`~prompttune.serve.classification`, generation in :mod:`~prompttune.serve.generation`). Requests are rendered in
the caller's thread (so a bad input fails at once), queued, and a worker thread takes up to ``max_batch`` inputs,
waiting at most ``max_wait_ms`` for the batch to fill; each kind runs its share of the batch together. Two CPU cost
rules, measured in ``benchmarks/prompt_cache.py``: a task's shared prompt is cached only from
``prompt_cache_min_tokens`` tokens on, and a batch of short and long inputs is cut into forwards of similar lengths
where the padding saved outweighs one more forward (``forward_overhead_tokens``; 0 keeps every batch whole).
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
from typing import Any, Iterable, Mapping, Sequence

import torch

from ..artifact import read_meta
from ..backbone import Backbone
from ..errors import ConfigError
from ..tasks import task_type
from .classification import ServedClassification
from .errors import OverloadedError, TaskConflictError, UnknownTaskError, UnsupportedError
from .tasks import TASK_KINDS, Job, ServedTask

log = logging.getLogger(__name__)

_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")

__all__ = ["BATCH_BUCKETS", "EngineStats", "OverloadedError", "PendingRequest", "ServeEngine", "ServedClassification",
           "TaskConflictError", "UnknownTaskError", "UnsupportedError"]


# ------------------------------------------------------------------------------------------------
# Requests, stats, the engine
# ------------------------------------------------------------------------------------------------
@dataclass
class PendingRequest:
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
# Measured on SmolLM2-135M, 2 CPU cores (benchmarks/prompt_cache.py, results/prompt-cache.json), 8 rows of 64 tokens:
# caching P prompt tokens gave no-cache / cache 0.96 at P=1, 1.01 at P=4 (0.59-1.14), 1.08 at P=8 (every run >= 1.01).
PROMPT_CACHE_MIN_TOKENS = 8  # a shared prompt shorter than this is recomputed: its cache costs more than it saves
# A forward pass cost 86 ms + 1.38 ms a token (least squares over 9 shapes): 62 tokens' worth of fixed cost.
FORWARD_OVERHEAD_TOKENS = 64  # a batch is cut by length where the padding saved costs more than one more forward


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
                 prefix_cache: bool = True, prompt_cache_min_tokens: int = PROMPT_CACHE_MIN_TOKENS,
                 forward_overhead_tokens: float = FORWARD_OVERHEAD_TOKENS, start: bool = True):
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
        self.prompt_cache_min_tokens = int(prompt_cache_min_tokens)
        self.forward_overhead_tokens = float(forward_overhead_tokens)
        # an encoder + head backbone's own classification head, as loaded (artifacts overwrite it when they load theirs)
        self.base_head = {k: v.detach().clone() for k, v in backbone.head_parameters().items()} \
            if backbone.family.has_task_head else {}
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
                                 num_labels=task_type(meta.get("task", "classification")).num_labels(meta))
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
                req = PendingRequest(fut, len(payloads))
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
