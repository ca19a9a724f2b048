"""Classification tasks in the serving engine: rows of many tasks in one forward.

- soft prompts: the soft tables of the tasks in the batch are stacked into one table and each row's soft
  indices are offset to its task's rows, so one embedding pass writes every task's soft tokens;
- verbalizers: the union of the label words' first tokens is scored once, and each row reads its own columns
  (multi-token words and templates with text after ``{mask}`` go through the likelihood path, which also mixes
  tasks: it is run as a second forward only when such rows are in the batch);
- prompt caching (families that ``caches_prompt``): the part of the input every request of a task shares (special
  tokens, soft tokens and template text before the first field) is run through the backbone once per task; its
  keys/values are reused for every row, so a batch only computes the tokens after it;
- lengths: rows of very different lengths are cut into forwards of similar lengths where that costs less than
  padding them all to the longest (:func:`~prompttune.serve.tasks.length_groups`).

Rows that cannot share the mixed forward (a method that does not ``shares_batch``, e.g. a prefix in every attention
layer, an encoder + head task carrying its own classification head, put into the backbone for that task's forward,
or a speech task, whose rows carry clips) are still batched with the other requests of their own task.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from ..backbone import Rows
from ..errors import ConfigError
from ..verbalizer import prediction
from .errors import TaskConflictError
from .tasks import Job, ServedTask, length_groups, register_task_kind, row_cache

if TYPE_CHECKING:
    from .engine import ServeEngine

log = logging.getLogger(__name__)


def _pad_right(t: torch.Tensor, width: int, value) -> torch.Tensor:
    if t.shape[1] == width:
        return t
    return torch.cat([t, torch.full((t.shape[0], width - t.shape[1]), value, dtype=t.dtype)], dim=1)


@register_task_kind
class ServedClassification(ServedTask):
    """A classification artifact (template + verbalizer + frozen-backbone method) on the shared backbone."""

    kind = "classification"
    operations = frozenset({"predict"})

    def __init__(self, name, directory, meta, pm, engine: "ServeEngine"):
        super().__init__(name, directory, meta, family=pm.backbone.family)
        self.pm = pm
        self.labels = list(pm.labels)
        self.fields = list(pm.template.fields)
        with torch.no_grad():  # P-tuning encoders run once here
            table = pm.method.soft_table(pm.backbone)
            self.table = table.detach() if table is not None else None
        self.word_tokens: list[list[int]] = [list(w) for w in pm.word_ids]
        self.word_class = pm.word_class.clone()
        self.fast = bool(pm.fast)
        self.deep = not pm.method.shares_batch  # e.g. a prefix: keys/values in every attention layer, one per forward
        # An encoder + head task's classification head lives in the backbone: the head trained with its prompt (or
        # the model's own, for an untrained method) is kept here and put in place for this task's forward.
        self.head: dict[str, torch.Tensor] | None = None
        if engine.backbone.family.has_task_head:
            own = {k: v.detach().clone() for k, v in pm.method.trained_head.items()}
            self.head = {k: own.get(k, v) for k, v in engine.base_head.items()}
        # a speech family's rows carry their clips' features, which the mixed forward's text rows do not merge
        self.own_forward = self.deep or self.head is not None or self.speech is not None
        if engine.prefix_cache and engine.backbone.family.caches_prompt and not self.deep:
            # the position before the mask reads the first label token: it (and anything after) is computed per row
            self.build_prompt_cache(engine, lambda row: pm.renderer.render(row, reserve=pm.reserve), self.table,
                                    lambda r: (r.mask if r.mask is not None else len(r.ids)) - 1)

    @classmethod
    def load(cls, engine, name, directory, meta):
        cls.check_shareable(engine, directory, meta)
        bb = engine.backbone
        if bb.family.has_task_head:
            want = len(meta.get("verbalizer", {}).get("words", {}))
            n_out = bb.model.config.num_labels
            if want != n_out:
                raise TaskConflictError(f"this artifact has {want} labels, the server's classification head has {n_out}",
                                        where=str(directory), fix="serve encoder + head artifacts with the same number of labels together")
        return cls(name, directory, meta, cls.load_onto(engine, directory), engine)

    # ---- inputs --------------------------------------------------------------------------------
    def make_jobs(self, operation, inputs, **options):
        if operation not in self.operations:
            raise self.unsupported(operation)
        if options:
            raise ConfigError(f"predict takes no options, got {sorted(options)}", where="request", fix="drop them")
        return [self.pm.renderer.render(self.as_row(x, i), reserve=self.pm.reserve) for i, x in enumerate(inputs)]

    def format_result(self, operation, raw):
        return prediction(self.labels, raw.exp())

    def describe(self):
        m = self.meta
        return {**super().describe(), "labels": self.labels, "fields": self.fields, "template": m.get("template"),
                "method": m.get("method"), "verbalizer": m.get("verbalizer", {}).get("words"),
                "calibrated": m.get("verbalizer", {}).get("calibration") is not None,
                "soft_tokens": 0 if self.table is None else int(self.table.shape[0]),
                "trainable_parameters": m.get("trainable_parameters"), "metrics": m.get("metrics"),
                "backbone": m.get("backbone", {}).get("name"), "created": m.get("created")}

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
            use_cache = engine.prefix_cache and engine.backbone.family.caches_prompt
            lengths = [cls._length(jobs[i], fast, use_cache) for i in idx]
            for group in length_groups(lengths, engine.forward_overhead_tokens):  # similar lengths: little padding
                part = [idx[k] for k in group]
                for i, res in zip(part, cls._forward([jobs[i] for i in part], engine, fast=fast)):
                    out[i] = res
        return out

    @staticmethod
    def _length(job: Job, fast: bool, use_cache: bool) -> int:
        """The tokens a job's row computes: up to its mask on the fast path, less what the prompt cache supplies."""
        r = job.payload
        n = r.mask if fast and r.mask is not None else len(r.ids)
        return n - (job.task.prefix_len(r) if use_cache else 0)

    @classmethod
    def _forward(cls, jobs: list[Job], engine: "ServeEngine", *, fast: bool) -> list[torch.Tensor]:
        bb = engine.backbone
        fam = bb.family
        use_cache = engine.prefix_cache and fam.caches_prompt
        # Group rows by task (stable), remembering where each job's rows land.
        tasks: dict[str, ServedClassification] = {}
        per_task: dict[str, list[int]] = {}
        for i, j in enumerate(jobs):
            tasks.setdefault(j.task.name, j.task)
            per_task.setdefault(j.task.name, []).append(i)
        union: list[int] = []
        if fast:
            union = sorted({w[0] for t in tasks.values() for w in t.word_tokens})
        parts: list[Rows] = []
        prefix: list[int] = []  # per model row: cached prefix tokens
        row_task: list[ServedClassification] = []
        offsets: dict[str, int] = {}
        tables = []
        n_soft = 0
        for name, idx in per_task.items():
            t = tasks[name]
            rendered = [jobs[i].payload for i in idx]
            plen = [t.prefix_len(r) for r in rendered] if use_cache else [0] * len(rendered)
            cut = [t.cut(r, p) for r, p in zip(rendered, plen)]
            rows = fam.build(cut, t.word_tokens, fast=fast, padding_side="right", shared_context=False)  # rows merge across tasks
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
        # no prefix: a deep-prompt task may have left its own in the attention layers
        inputs = bb.inputs(bb.embed(merged.input_ids, merged.soft_index, table), merged.attention_mask, prefix=None)
        engine.stats.forward(rows=merged.input_ids.shape[0], computed=int(merged.attention_mask.sum()), reused=sum(prefix))
        past = row_cache(prefix, row_task, engine.device) if use_cache else None
        scores = fam.word_scores(inputs, merged, past=past)  # fast: (R, |union|); likelihood: (R, 1)
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
