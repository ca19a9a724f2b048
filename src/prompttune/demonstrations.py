"""Demonstrations (LM-BFF, Gao et al. 2021; GPT-3 in-context examples): labelled training examples written out with
their label word and put in front of each input, at training and at inference.

For each query, ``k`` examples of every class are taken from the pool (the training set, saved with the artifact),
never the query itself (matched on its input fields): ``random`` draws them with a seed fixed per query (so a
query always sees the same demonstrations, and runs repeat exactly); ``similar`` takes the ones with the highest
TF-IDF cosine similarity to the query. Each is written with the demonstration template (by default the prompt's own
template, its soft tokens left out and ``{mask}`` filled with the class's first label word) and joined by
``separator``.

Length: the query is rendered first, with its own budget; the demonstrations get only what it leaves, shared so
that short ones keep their length and long ones split the rest equally. A demonstration that does not fit its share
has its input fields cut (longest first); one that would keep fewer than ``min_field_tokens`` of input is dropped. So demonstrations are cut and dropped before the query's own fields
ever are.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections import Counter
from typing import Mapping, Sequence


from .errors import ConfigError
from .schemas import DemonstrationConfig
from .template import Field, Mask, Rendered, Soft, Template, Text, cut_text


_WORD = re.compile(r"\w+", re.UNICODE)


def _terms(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


class Demonstrations:
    """Chooses and writes demonstrations for a query; ``apply`` puts them in front of a rendered example."""

    def __init__(self, pool: Sequence[Mapping[str, str]], config: DemonstrationConfig | Mapping | None = None):
        self.config = config if isinstance(config, DemonstrationConfig) else DemonstrationConfig.model_validate(dict(config or {}))
        if not pool:
            raise ConfigError("demonstrations need labelled examples to draw from", where="prompt.demonstrations",
                              fix="train with a non-empty training set, or drop prompt.demonstrations")
        bad = [i for i, r in enumerate(pool) if "label" not in r]
        if bad:
            raise ConfigError(f"demonstration example {bad[0] + 1} has no label", where="prompt.demonstrations", fix="use labelled rows")
        self.pool = [dict(r) for r in pool]
        self._bound = None

    @classmethod
    def from_config(cls, config, pool) -> "Demonstrations":
        return cls(pool, config)

    def to_dict(self) -> dict:
        return {"config": self.config.model_dump(mode="json"), "pool": self.pool}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Demonstrations":
        return cls(d["pool"], d.get("config"))

    # ---- binding to a model ---------------------------------------------------------------------
    def bind(self, pm) -> None:
        """Check the pool against ``pm``'s template and verbalizer and prepare the demonstration text."""
        verbalizer, template = pm.verbalizer, pm.template
        verbalizer.check_labels([r["label"] for r in self.pool], where="demonstration pool")
        demo = Template(self.config.template) if self.config.template else template
        if demo.n_masks != 1:
            raise ConfigError(f"the demonstration template {demo.text!r} needs exactly one {{mask}} for the label word",
                              where="prompt.demonstrations.template", fix="write e.g. '{text} It was {mask}.'")
        fields = demo.fields + [f for f in template.fields if f not in demo.fields]
        missing = [f for f in fields for r in self.pool[:1] if f not in r]
        if missing:
            raise ConfigError(f"demonstration examples lack field {missing[0]!r}", where="prompt.demonstrations",
                              fix="use rows with the template's fields")
        self.tokenizer = pm.backbone.tokenizer
        self.max_length = pm.max_length
        self.demo_segments = [s for s in demo.segments if not isinstance(s, Soft)]
        self.demo_fields = demo.fields
        self.query_fields = template.fields
        self.words = {l: ws[0] for l, ws in verbalizer.words.items()}
        self.prefix_len = len(pm.renderer.prefix_special)
        self.by_label: dict[str, list[int]] = {}
        for i, r in enumerate(self.pool):
            self.by_label.setdefault(r["label"], []).append(i)
        self.labels = [l for l in verbalizer.labels if l in self.by_label]
        if self.config.select == "similar":
            docs = [Counter(_terms(self._query_text(r))) for r in self.pool]
            df = Counter(t for d in docs for t in d)
            n = len(docs)
            self.idf = {t: math.log((1 + n) / (1 + c)) + 1.0 for t, c in df.items()}
            self.vectors = [self._tfidf(d) for d in docs]
        self._bound = pm

    def _query_text(self, row) -> str:
        return " ".join(str(row.get(f, "")) for f in self.query_fields)

    def _tfidf(self, counts: Counter) -> dict[str, float]:
        v = {t: c * self.idf.get(t, math.log(1 + len(self.pool)) + 1.0) for t, c in counts.items()}
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        return {t: x / norm for t, x in v.items()}

    # ---- choosing ---------------------------------------------------------------------------------
    def _key(self, row) -> tuple:
        return tuple(str(row.get(f, "")) for f in self.query_fields)

    def choose(self, row: Mapping[str, str]) -> list[dict]:
        """The demonstrations for ``row``: ``k`` per class, never ``row`` itself, classes interleaved."""
        if self._bound is None:
            raise ConfigError("demonstrations are not bound to a model", where="demonstrations", fix="call PromptModel.set_demonstrations")
        key = self._key(row)
        k = self.config.k
        per_class: list[list[int]] = []
        if self.config.select == "similar":
            q = self._tfidf(Counter(_terms(self._query_text(row))))
        else:
            digest = hashlib.sha256(repr(key).encode("utf-8")).hexdigest()
            rng = random.Random(f"{self.config.seed}|{digest}")
        for label in self.labels:
            ix = [i for i in self.by_label[label] if self._key(self.pool[i]) != key]
            if self.config.select == "similar":
                sims = [sum(w * self.vectors[i].get(t, 0.0) for t, w in q.items()) for i in ix]
                order = sorted(range(len(ix)), key=lambda j: (-sims[j], ix[j]))
                per_class.append([ix[j] for j in order[:k]])
            else:
                per_class.append(rng.sample(ix, min(k, len(ix))))
        out = []
        for j in range(k):
            for picks in per_class:
                if j < len(picks):
                    out.append(self.pool[picks[j]])
        if self.config.select == "random":
            rng.shuffle(out)
        else:
            out.reverse()  # the most similar closest to the query
        return out

    # ---- writing ---------------------------------------------------------------------------------
    def _text(self, row, values: Mapping[str, str]) -> str:
        parts: list[str] = []
        for seg in self.demo_segments:
            if isinstance(seg, Text):
                parts.append(seg.text)
            elif isinstance(seg, Field):
                parts.append(values[seg.name])
            elif isinstance(seg, Mask):
                word = self.words[row["label"]]
                parts.append(word.lstrip() if parts and parts[-1][-1:].isspace() else word)
        return "".join(parts).strip() + self.config.separator

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _fit(self, row, budget: int) -> list[int] | None:
        """Token ids of one demonstration within ``budget``, its fields cut longest first; None if it cannot fit."""
        values = {f: str(row[f]) for f in self.demo_fields}
        for _ in range(16):
            ids = self._ids(self._text(row, values))
            over = len(ids) - budget
            if over <= 0:
                return ids
            lengths = {f: self._ids(v) for f, v in values.items()}
            if not lengths:
                return None
            longest = max(lengths, key=lambda f: len(lengths[f]))
            keep = len(lengths[longest]) - over
            if keep < self.config.min_field_tokens:
                return None
            values[longest] = cut_text(self.tokenizer, values[longest], lengths[longest], keep)
        return None

    def apply(self, row: Mapping[str, str], rendered: Rendered, *, reserve: int = 0) -> Rendered:
        """``rendered`` (the query alone) with demonstrations put after the leading special tokens, within max_length."""
        budget = self.max_length - reserve - len(rendered.ids)
        if budget <= 0:
            return rendered
        demos = self.choose(row)
        full = [len(self._ids(self._text(d, {f: str(d[f]) for f in self.demo_fields}))) for d in demos]
        active = list(range(len(demos)))
        while active:
            # Share the budget: short demonstrations keep their length, long ones split what is left equally.
            share, left = {}, budget
            for i, j in enumerate(sorted(active, key=lambda j: full[j])):
                share[j] = min(full[j], left // (len(active) - i))
                left -= share[j]
            fitted = {j: self._fit(demos[j], share[j]) for j in active}
            failed = [j for j in active if fitted[j] is None]
            if not failed:
                break
            active.remove(max(failed, key=lambda j: (full[j], j)))  # drop one, and share again among the others
        demo_ids = [t for j in active for t in fitted[j]]
        if not demo_ids:
            return rendered
        p = self.prefix_len
        ids = rendered.ids[:p] + demo_ids + rendered.ids[p:]
        soft = rendered.soft[:p] + [-1] * len(demo_ids) + rendered.soft[p:]
        mask = None if rendered.mask is None else rendered.mask + len(demo_ids)
        return Rendered(ids, soft, mask, rendered.truncated)

