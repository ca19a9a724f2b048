"""Automatic prompt search: label words and templates, ranked by the frozen model on dev (forward passes only).

Label words (LM-BFF, Gao et al. 2021; PETAL, Schick et al. 2020): one forward over the training examples gives the
model's log-probabilities over the whole vocabulary at the mask. For each class, the ``pool`` tokens with the highest
mean probability over that class's examples are kept and ranked by log p_in + log(p_in / p_out) (likely on the class,
and likelier there than on the other classes); the ``per_class`` best are the class's candidates. Every combination
(distinct words) is scored on the training examples from the same forward, the best ``max_candidates`` are scored
on dev, and the table is ranked by dev accuracy (ties: dev loss).

Templates: edits of a seed template, one kind at a time (the cue before the mask, the frame around a single input
field, an instruction in front), then the best edit of each kind combined (a coordinate-ascent step). Each candidate
is the seed's verbalizer on the edited template, scored zero-shot on dev.

Scores come from the frozen model as ``PromptModel`` computes them. When a verbalizer's words are single tokens read
at one position (the fast path the model itself takes), its scores are read from the cached vocabulary
log-probabilities, which is the same number without another forward; otherwise a zero-shot ``PromptModel`` scores it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from .errors import ConfigError, TemplateError
from .progress import progress_bar
from .template import Field, Mask, Template, Text, segment_text, tail_is_empty
from .verbalizer import Verbalizer


@dataclass
class Candidate:
    """One prompt found by the search, with its scores."""

    template: str
    verbalizer: dict[str, list[str]]
    kind: str  # seed | label-words | cue | frame | instruction | combined
    dev_accuracy: float = float("nan")
    dev_loss: float = float("nan")
    train_accuracy: float | None = None
    note: str = ""

    def describe(self) -> str:
        if self.kind == "label-words" or self.kind == "seed-words":
            return ", ".join(f"{l}: {'/'.join(ws)}" for l, ws in self.verbalizer.items())
        return self.template

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchResult:
    candidates: list[Candidate]  # ranked, best first
    seed: Candidate
    extra: dict = field(default_factory=dict)

    @property
    def best(self) -> Candidate:
        return self.candidates[0]


def rank_key(c: Candidate, metric: str = "accuracy"):
    loss = c.dev_loss if not math.isnan(c.dev_loss) else float("inf")
    if metric == "loss":
        return (loss, -c.dev_accuracy)
    return (-c.dev_accuracy, loss)


# ------------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------------
def _zero_shot(backbone, template: str, verbalizer, pm_like) -> "object":
    from .model import PromptModel

    return PromptModel(backbone, template, verbalizer, "zero-shot", max_length=pm_like.max_length, padding_side=pm_like.padding_side,
                       demonstrations=_copy_demos(pm_like))


def _copy_demos(pm):
    """The same demonstrations for another prompt (binding writes them with that prompt's template)."""
    d = getattr(pm, "demonstrations", None)
    if d is None:
        return None
    from .demonstrations import Demonstrations

    return Demonstrations.from_dict(d.to_dict())


def _check_searchable(pm) -> None:
    if not pm.backbone.family.uses_verbalizer:
        raise ConfigError(f"prompt search needs a model that scores label words at a mask; {pm.backbone.name!r} is loaded as "
                          f"{pm.backbone.family.name}", where="model.family", fix="use a causal, masked or encoder-decoder LM")
    if pm.template.has_soft:
        raise TemplateError(f"prompt search scores hard prompts; the template {pm.template.text!r} has {{soft}} tokens",
                            where="prompt.template", fix="search with the template's words only (drop the {soft} placeholders)")


@torch.no_grad()
def mask_log_probs(pm, rows: Sequence[Mapping[str, str]], *, batch_size: int = 16, progress: bool = False) -> torch.Tensor:
    """(N, V) log-probabilities of every vocabulary token as the first token at the mask (a causal LM: the next token)."""
    from .data import length_batches

    _check_searchable(pm)
    fam = pm.backbone.family
    out_emb = pm.backbone.model.get_output_embeddings()
    V = out_emb.weight.shape[0] if out_emb is not None else len(pm.backbone.tokenizer)
    vocab = [[i] for i in range(V)]
    was_training = pm.training
    pm.eval()
    out = torch.empty(len(rows), V)
    bar = progress_bar(progress, len(rows), "mask scores")
    for idx in length_batches([pm.length(r) for r in rows], batch_size, shuffle=False):
        batch = fam.build([pm.render(rows[i]) for i in idx], vocab, fast=True, padding_side=pm.padding_side).to(pm.device)
        out[idx] = fam.word_scores(pm.method.model_inputs(pm.backbone, batch), batch).float().log_softmax(-1).cpu()
        bar.update(len(idx))
    bar.close()
    pm.train(was_training)
    return out


def _scores_from_cache(lp: torch.Tensor, word_ids: Sequence[Sequence[int]], y: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """Accuracy, loss and (N, C) class log-probs of single-token words per class, from cached vocab log-probs."""
    cols = [torch.logsumexp(lp[:, ids], dim=1) - math.log(len(ids)) for ids in word_ids]
    logp = torch.stack(cols, dim=1).log_softmax(-1)
    return float((logp.argmax(-1) == y).float().mean()), float(F.nll_loss(logp, y)), logp


def _cache_exact(pm, verbalizer: Verbalizer) -> list[list[int]] | None:
    """Per class, the single token ids of its words when ``pm`` would score them in one position; else None."""
    fam = pm.backbone.family
    try:
        enc = verbalizer.encode(pm.backbone.tokenizer, leading_space=pm.renderer.space_before_mask and fam.leading_space())
    except Exception:
        return None
    flat = [w for ws in enc for w in ws]
    if not fam.fast_ok(flat, tail_is_empty(pm.template.segments)):
        return None
    return [[w[0] for w in ws] for ws in enc]


def score_prompt(pm, template: str, verbalizer, rows, *, cache: torch.Tensor | None = None, batch_size: int = 16) -> tuple[float, float]:
    """(accuracy, loss) of a hard prompt on labelled ``rows``, zero-shot on ``pm``'s backbone."""
    verbalizer = Verbalizer.from_spec(verbalizer)
    y = torch.tensor([verbalizer.label_index(r["label"]) for r in rows])
    if cache is not None and template == pm.template.text:
        ids = _cache_exact(pm, verbalizer)
        if ids is not None:
            acc, loss, _ = _scores_from_cache(cache, ids, y)
            return acc, loss
    zs = _zero_shot(pm.backbone, template, verbalizer, pm)
    logp = zs.predict_log_probs(rows, batch_size=batch_size, calibrate=False)
    return float((logp.argmax(-1) == y).float().mean()), float(F.nll_loss(logp, y))


# ------------------------------------------------------------------------------------------------
# Label words
# ------------------------------------------------------------------------------------------------
def _word_of_token(pm, token_id: int, special: set[int]) -> str | None:
    """The label word that encodes to exactly ``token_id`` at this template's mask, or None."""
    if token_id in special:
        return None
    tok = pm.backbone.tokenizer
    text = tok.decode([token_id])
    word = text.strip()
    if len(word) < 2 or not word.isalpha():
        return None
    lead = pm.renderer.space_before_mask and pm.backbone.family.leading_space()
    for w in (word, text):
        try:
            enc = Verbalizer({"x": w}).encode(tok, leading_space=lead)
        except Exception:
            continue
        if enc == [[[token_id]]]:
            return w
    return None


def label_word_candidates(pm, train_rows, *, per_class: int = 5, pool: int = 100, cache: torch.Tensor | None = None,
                          progress: bool = False) -> dict[str, list[tuple[str, int, float]]]:
    """Per label, the ``per_class`` best (word, token id, score) from the model's own mask predictions.

    score = log p_in + log(p_in / p_out), with p_in (p_out) the word's mean probability at the mask over the class's
    (the other classes') examples: likely on the class (LM-BFF) and likelier there than elsewhere (PETAL's
    likelihood ratio). The ratio alone favours rare words that are merely less rare on one class."""
    labels = pm.verbalizer.labels
    pm.verbalizer.check_labels([r["label"] for r in train_rows], where="training data")
    y = torch.tensor([labels.index(r["label"]) for r in train_rows])
    missing = [l for i, l in enumerate(labels) if not (y == i).any()]
    if missing:
        raise ConfigError(f"label-word search needs training examples of every class; none for {missing}", where="data.train",
                          fix="give at least one example per class")
    lp = cache if cache is not None else mask_log_probs(pm, train_rows, progress=progress)
    special = set(pm.backbone.tokenizer.all_special_ids)
    out: dict[str, list[tuple[str, int, float]]] = {}
    for c, label in enumerate(labels):
        inside = torch.logsumexp(lp[y == c], 0) - math.log(int((y == c).sum()))
        other = (torch.logsumexp(lp[y != c], 0) - math.log(int((y != c).sum()))) if (y != c).any() else torch.zeros_like(inside)
        top = inside.topk(min(pool * 4, inside.numel())).indices.tolist()  # spare room for tokens that are not words
        kept: list[tuple[str, int, float]] = []
        for t in top:
            w = _word_of_token(pm, t, special)
            if w is not None:
                kept.append((w, t, float(2 * inside[t] - other[t])))
            if len(kept) >= pool:
                break
        kept.sort(key=lambda x: -x[2])
        out[label] = kept[:per_class]
    return out


def search_label_words(pm, train_rows, dev_rows, *, per_class: int = 5, pool: int = 100, max_candidates: int = 20,
                       metric: str = "accuracy", progress: bool = False, batch_size: int = 16) -> SearchResult:
    """Rank verbalizers built from the model's own mask predictions on ``train_rows`` by their score on ``dev_rows``."""
    _check_searchable(pm)
    if not dev_rows:
        raise ConfigError("search needs dev examples to rank candidates", where="data.dev", fix="give a dev file or few-shot sample")
    labels = pm.verbalizer.labels
    train_cache = mask_log_probs(pm, train_rows, batch_size=batch_size, progress=progress)
    dev_cache = mask_log_probs(pm, dev_rows, batch_size=batch_size, progress=progress)
    per_label = label_word_candidates(pm, train_rows, per_class=per_class, pool=pool, cache=train_cache)
    empty = [l for l, ws in per_label.items() if not ws]
    if empty:
        raise ConfigError(f"no single-token word candidates for {empty}", where="search", fix="raise pool, or write label words by hand")
    y_tr = torch.tensor([labels.index(r["label"]) for r in train_rows])
    y_dev = torch.tensor([labels.index(r["label"]) for r in dev_rows])
    # Combinations: bounded so that many classes do not explode (k ** C).
    k = max(1, min(per_class, int(20000 ** (1 / len(labels)))))
    combos = []
    for combo in itertools.product(*[per_label[l][:k] for l in labels]):
        words = [w for w, _, _ in combo]
        if len({w.strip().lower() for w in words}) < len(words):
            continue
        acc, loss, _ = _scores_from_cache(train_cache, [[t] for _, t, _ in combo], y_tr)
        combos.append((acc, -loss, combo))
    combos.sort(key=lambda x: (-x[0], -x[1]))
    cands: list[Candidate] = []
    for tr_acc, _, combo in combos[:max_candidates]:
        words = {l: [w] for l, (w, _, _) in zip(labels, combo)}
        acc, loss, _ = _scores_from_cache(dev_cache, [[t] for _, t, _ in combo], y_dev)
        cands.append(Candidate(pm.template.text, words, "label-words", acc, loss, tr_acc,
                               note="score " + ", ".join(f"{w.strip()} {s:+.2f}" for w, _, s in combo)))
    seed_words = {l: list(ws) for l, ws in pm.verbalizer.words.items()}
    acc, loss = score_prompt(pm, pm.template.text, seed_words, dev_rows, cache=dev_cache, batch_size=batch_size)
    tr = score_prompt(pm, pm.template.text, seed_words, train_rows, cache=train_cache, batch_size=batch_size)[0]
    seed = Candidate(pm.template.text, seed_words, "seed-words", acc, loss, tr, note="the configured verbalizer")
    if not any(c.verbalizer == seed_words for c in cands):
        cands.append(seed)
    cands.sort(key=lambda c: rank_key(c, metric))
    return SearchResult(cands, seed, extra={"per_class": {l: [(w, s) for w, _, s in ws] for l, ws in per_label.items()}})


# ------------------------------------------------------------------------------------------------
# Templates
# ------------------------------------------------------------------------------------------------
CUES = ("\nSentiment:", "\nAnswer:", "\nLabel:", " It was", " This is", " All in all, it was", "\nIn one word, it is",
        "\nCategory:", " Overall:")
FRAMES = ("{field}", "Input: {field}", '"{field}"', "Text: {field}")
INSTRUCTIONS = ("Classify the text as {choices}.\n", "Read the text and answer with one word: {choices}.\n")


def _words_text(verbalizer: Verbalizer) -> str:
    first = [ws[0].strip() for ws in verbalizer.words.values()]
    return ", ".join(first[:-1]) + " or " + first[-1] if len(first) > 1 else first[0]


def _split_seed(template: Template):
    """(head segments before the last field, the last field, text between it and the mask, the mask and after)."""
    segs = list(template.segments)
    try:
        m = next(i for i, s in enumerate(segs) if isinstance(s, Mask))
    except StopIteration:
        raise TemplateError(f"the seed template {template.text!r} has no {{mask}}", where="prompt.template", fix="add {mask}") from None
    fields = [i for i, s in enumerate(segs[:m]) if isinstance(s, Field)]
    if not fields:
        raise TemplateError(f"template search needs an input field before {{mask}} in {template.text!r}", where="prompt.template",
                            fix="write e.g. '{text} It was {mask}'")
    f = fields[-1]
    return segs[:f], segs[f], segs[f + 1:m], segs[m:]


def _join(segs) -> str:
    return "".join(segment_text(s) for s in segs)


def template_candidates(seed: str, verbalizer, *, cues: Sequence[str] = CUES, frames: Sequence[str] = FRAMES,
                        instructions: Sequence[str] = INSTRUCTIONS) -> list[tuple[str, str]]:
    """(kind, template) edits of ``seed``, one edit each: the cue before the mask, the frame around a one-field input,
    an instruction in front. The seed comes first; duplicates are dropped."""
    t = Template(seed)
    verbalizer = Verbalizer.from_spec(verbalizer)
    head, last, between, tail = _split_seed(t)
    out: list[tuple[str, str]] = [("seed", seed)]
    between_text = _join(between)
    # Whitespace ending the cue belongs to the label word; keep the seed's choice of it.
    trail = between_text[len(between_text.rstrip()):] if between_text.strip() else " "
    for cue in cues:
        out.append(("cue", _join(head) + _join([last]) + cue.replace("{", "{{").replace("}", "}}") + trail + _join(tail)))
    if len(t.fields) == 1:
        for frame in frames:
            framed = frame.replace("{field}", "\0").replace("{", "{{").replace("}", "}}").replace("\0", _join([last]))
            out.append(("frame", framed + _join(between) + _join(tail)))
    choices = _words_text(verbalizer).replace("{", "{{").replace("}", "}}")
    for ins in instructions:
        out.append(("instruction", ins.replace("{choices}", choices) + seed))
    seen, uniq = set(), []
    for kind, text in out:
        if text not in seen:
            Template(text)  # every candidate parses
            seen.add(text)
            uniq.append((kind, text))
    return uniq


def _combine(seed: str, best: dict[str, str]) -> str | None:
    """Apply the best cue, frame and instruction edits together to the seed."""
    t = Template(seed)
    head, last, between, tail = _split_seed(t)
    text = seed
    if "frame" in best:  # frame replaces everything before the field's cue
        fb = Template(best["frame"])
        fh, fl, _, _ = _split_seed(fb)
        head = list(fh)
    if "cue" in best:
        _, _, between, _ = _split_seed(Template(best["cue"]))
    text = _join(head) + _join([last]) + _join(between) + _join(tail)
    if "instruction" in best:
        ins = best["instruction"][: len(best["instruction"]) - len(seed)]
        text = ins + text
    return text if text != seed and text not in best.values() else None


def generate_cues(pm, train_rows, *, length: int = 3, beam: int = 3, proposals: int = 8, examples_per_class: int = 8,
                  progress: bool = False, batch_size: int = 16) -> list[tuple[str, float]]:
    """Templates written by the model itself (in the spirit of LM-BFF's T5-generated templates, for any LM family):
    a beam search over the cue between the input and the mask. At each step the model proposes the words it finds
    most likely to come next after the input and the cue so far (averaged over training examples); each extension
    is scored by the mean log-probability the prompt gives the gold label (on ``examples_per_class`` examples per
    class), and the ``beam`` best are kept. Returns (template, train score) for every kept cue, best first."""
    from .data import few_shot

    _check_searchable(pm)
    head, last, between, tail = _split_seed(pm.template)
    if any(not (isinstance(s, Text) and not s.text.strip()) for s in tail[1:]):
        raise TemplateError("cue generation needs a template that ends at its {mask}", where="prompt.template",
                            fix="move the text after {mask} before it, or search with the built-in edits only")
    stem = _join(head) + _join([last])  # the cue brings its own leading space: the model proposes " It", " The", ...
    words = {l: list(ws) for l, ws in pm.verbalizer.words.items()}
    per = min([examples_per_class] + [sum(r["label"] == l for r in train_rows) for l in pm.verbalizer.labels])
    rows = few_shot(train_rows, per, seed=0) if per >= 1 else list(train_rows)
    special = set(pm.backbone.tokenizer.all_special_ids)
    tok = pm.backbone.tokenizer
    scores: dict[str, float] = {}

    def score(cue: str) -> float:
        if cue not in scores:
            t = stem + cue.replace("{", "{{").replace("}", "}}") + " {mask}"
            acc, loss = score_prompt(pm, t, words, rows, batch_size=batch_size)
            scores[cue] = -loss
        return scores[cue]


    bar = progress_bar(progress, length * beam * proposals, "generate")
    beams = [""]
    kept: dict[str, float] = {}
    for _ in range(length):
        grown: list[str] = []
        for cue in beams:
            lm = _zero_shot(pm.backbone, stem + cue.replace("{", "{{").replace("}", "}}") + "{mask}", words, pm)
            lp = torch.logsumexp(mask_log_probs(lm, rows, batch_size=batch_size), 0)
            picked = 0
            for t in lp.topk(min(proposals * 20, lp.numel())).indices.tolist():
                piece = tok.decode([t])
                if t in special or not (piece.strip().isalpha() or piece.strip() in (":", ",")) or "\n" in piece:
                    continue
                if not cue and not piece.startswith(" "):
                    continue  # the first word must not glue onto the input's last word
                grown.append(cue + piece)
                picked += 1
                if picked >= proposals:
                    break
        for cue in grown:
            score(cue)
            bar.update(1)
        beams = sorted(dict.fromkeys(grown), key=lambda c: -scores[c])[:beam]  # stable: ties keep the model's order
        kept.update({c: scores[c] for c in beams})
    bar.close()
    ranked = sorted(kept.items(), key=lambda x: -x[1])
    return [(stem + c.replace("{", "{{").replace("}", "}}") + " {mask}", sc) for c, sc in ranked]


def search_templates(pm, train_rows, dev_rows, *, cues: Sequence[str] = CUES, frames: Sequence[str] = FRAMES,
                     instructions: Sequence[str] = INSTRUCTIONS, extra: Sequence[str] = (), generate: int = 0,
                     metric: str = "accuracy", progress: bool = False, batch_size: int = 16) -> SearchResult:
    """Score edits of ``pm``'s template (with its verbalizer) zero-shot on ``dev_rows``; then the best edits combined.
    ``generate``: also the best ``generate`` cues written by the model itself (``generate_cues``)."""
    _check_searchable(pm)
    if not dev_rows:
        raise ConfigError("search needs dev examples to rank candidates", where="data.dev", fix="give a dev file or few-shot sample")
    words = {l: list(ws) for l, ws in pm.verbalizer.words.items()}
    pool = template_candidates(pm.template.text, words, cues=cues, frames=frames, instructions=instructions)
    pool += [("given", Template(x).text) for x in extra if x not in {t for _, t in pool}]
    if generate:
        made = generate_cues(pm, train_rows, progress=progress, batch_size=batch_size)[:generate]
        pool += [("generated", t) for t, _ in made if t not in {t for _, t in pool}]

    bar = progress_bar(progress, len(pool) + 1, "templates")
    cands: list[Candidate] = []
    for kind, text in pool:
        acc, loss = score_prompt(pm, text, words, dev_rows, batch_size=batch_size)
        cands.append(Candidate(text, words, kind, acc, loss))
        bar.update(1)
    seed = cands[0]
    best_by_kind: dict[str, str] = {}
    for kind in ("cue", "frame", "instruction"):
        better = [c for c in cands if c.kind == kind and rank_key(c, metric) < rank_key(seed, metric)]
        if better:
            best_by_kind[kind] = min(better, key=lambda c: rank_key(c, metric)).template
    if len(best_by_kind) >= 2:
        combined = _combine(pm.template.text, best_by_kind)
        if combined and combined not in {c.template for c in cands}:
            acc, loss = score_prompt(pm, combined, words, dev_rows, batch_size=batch_size)
            cands.append(Candidate(combined, words, "combined", acc, loss, note="best " + " + ".join(best_by_kind)))
    bar.update(1)
    bar.close()
    cands.sort(key=lambda c: rank_key(c, metric))
    return SearchResult(cands, seed)


# ------------------------------------------------------------------------------------------------
# Config in, config out
# ------------------------------------------------------------------------------------------------
def run_search(cfg, what: str = "both", *, per_class: int = 5, max_candidates: int = 20, metric: str = "accuracy",
               generate: int = 0, progress: bool = True, log=print, backbone=None) -> dict:
    """Search as configured. ``what``: verbalizer, template or both (label words first, then templates with the best
    words). Returns {"verbalizer": SearchResult, "template": SearchResult, "config": the best as a RunConfig}."""
    from .tasks import ClassificationTask

    if what not in ("verbalizer", "template", "both"):
        raise ConfigError(f"--what {what!r}", where="search", fix="use verbalizer, template or both")
    train, dev, _ = ClassificationTask.load_splits(cfg)
    log(f"data: {len(train)} train, {len(dev)} dev examples")
    pm = ClassificationTask.build(cfg, backbone, method="zero-shot")
    pm.template.check(needs_mask=True, columns=train[0].keys())
    _attach_demonstrations(cfg, pm, train)
    out: dict = {}
    best_template, best_words = cfg.prompt.template, cfg.prompt.verbalizer
    if what in ("verbalizer", "both"):
        res = search_label_words(pm, train, dev, per_class=per_class, max_candidates=max_candidates, metric=metric,
                                 progress=progress)
        out["verbalizer"] = res
        best_words = {l: (ws[0] if len(ws) == 1 else ws) for l, ws in res.best.verbalizer.items()}
        log(f"best label words: {res.best.describe()} (dev accuracy {res.best.dev_accuracy:.3f}, seed {res.seed.dev_accuracy:.3f})")
    if what in ("template", "both"):
        from .model import PromptModel

        if best_words != cfg.prompt.verbalizer:
            pm = PromptModel(pm.backbone, cfg.prompt.template, best_words, "zero-shot", max_length=pm.max_length,
                             padding_side=pm.padding_side, demonstrations=_copy_demos(pm))
        res = search_templates(pm, train, dev, metric=metric, generate=generate, progress=progress)
        out["template"] = res
        best_template = res.best.template
        log(f"best template: {res.best.template!r} (dev accuracy {res.best.dev_accuracy:.3f}, seed {res.seed.dev_accuracy:.3f})")
    new = cfg.model_dump(mode="json")
    new["prompt"]["template"] = best_template
    new["prompt"]["verbalizer"] = best_words
    out["config"] = type(cfg).model_validate(new)
    return out


def _attach_demonstrations(cfg, pm, train) -> None:
    demo_cfg = getattr(cfg.prompt, "demonstrations", None)
    if demo_cfg is not None:
        from .demonstrations import Demonstrations

        pm.set_demonstrations(Demonstrations.from_config(demo_cfg, train))


def write_config(cfg, path) -> None:
    """Write a RunConfig as YAML (temporary name + rename)."""
    from pathlib import Path

    from .files import atomic_write_text
    from .config import dump_config

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, dump_config(cfg))
