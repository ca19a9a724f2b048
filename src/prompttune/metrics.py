"""Evaluation metrics: classification quality and run efficiency.

Everything returned here is plain Python (``int``, ``float``, ``str``, ``list``,
``dict``, ``None``) so it can be passed straight to :func:`json.dumps` or to
:func:`prompttune.report.write_report`.

Zero-division convention (same as scikit-learn's ``zero_division=0``):

* precision of a label that is never predicted is ``0.0``;
* recall of a label with no support (never the gold label) is ``0.0``;
* F1 of a label is ``2*tp / (2*tp + fp + fn)``, and ``0.0`` when that
  denominator is zero (no support *and* never predicted).

``macro_f1`` is the unweighted mean of the per-label F1 over **all** labels
passed in ``labels`` -- including labels that occur neither in ``y_true`` nor
in ``y_pred`` (they contribute an F1 of 0 and so pull the mean down). This is
exactly ``sklearn.metrics.f1_score(y_true, y_pred, labels=range(len(labels)),
average="macro", zero_division=0)``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import numpy as np

__all__ = ["classification_metrics", "efficiency_metrics", "generation_metrics"]


def _as_label_ids(values: Sequence[int], name: str, n_labels: int) -> np.ndarray:
    """Convert a sequence of label ids to an int64 array, validating each id."""
    ids = []
    for i, v in enumerate(values):
        if isinstance(v, (bool, np.bool_)):
            raise ValueError(f"{name}[{i}] is a bool ({v!r}); expected an integer label id")
        try:
            iv = operator.index(v)
        except TypeError:
            # Accept integral floats such as 2.0 (e.g. from numpy float arrays), nothing else.
            if isinstance(v, (float, np.floating)) and math.isfinite(v) and float(v).is_integer():
                iv = int(v)
            else:
                raise ValueError(
                    f"{name}[{i}] = {v!r} is not an integer label id"
                ) from None
        if not 0 <= iv < n_labels:
            raise ValueError(
                f"{name}[{i}] = {iv} is out of range: label ids must be in [0, {n_labels - 1}] "
                f"for {n_labels} labels"
            )
        ids.append(iv)
    return np.asarray(ids, dtype=np.int64)


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]
) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and confusion matrix.

    Args:
        y_true: gold label ids, each in ``range(len(labels))``.
        y_pred: predicted label ids, same length as ``y_true``.
        labels: label names; position ``i`` names label id ``i``. Must be unique.

    Returns:
        A JSON-serialisable dict::

            {
              "n": int,                      # number of examples
              "accuracy": float,             # 0.0 when n == 0
              "macro_f1": float,             # mean F1 over all labels (see module doc)
              "per_class": {label: {"precision", "recall", "f1", "support"}},
              "confusion_matrix": [[int]],   # rows = true label, cols = predicted label
              "labels": [str],
            }

        Zero divisions give 0.0 (see the module docstring).

    Raises:
        ValueError: lengths differ, ``labels`` is empty or has duplicates, or an id
            is not an integer in range.
    """
    if isinstance(labels, str):
        raise ValueError("labels must be a sequence of label names, not a single string")
    label_names = [str(label) for label in labels]
    if not label_names:
        raise ValueError("labels is empty; at least one label is required")
    if len(set(label_names)) != len(label_names):
        dupes = sorted({name for name in label_names if label_names.count(name) > 1})
        raise ValueError(f"labels must be unique; duplicated: {dupes}")
    if len(y_true) != len(y_pred):
        raise ValueError(
            f"y_true and y_pred have different lengths ({len(y_true)} vs {len(y_pred)})"
        )

    k = len(label_names)
    t = _as_label_ids(y_true, "y_true", k)
    p = _as_label_ids(y_pred, "y_pred", k)
    n = int(t.shape[0])

    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (t, p), 1)

    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)  # row sums: how often each label is gold
    predicted = cm.sum(axis=0).astype(np.float64)  # column sums: how often it is predicted
    fp = predicted - tp
    fn = support - tp

    def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        out = np.zeros_like(num)
        np.divide(num, den, out=out, where=den > 0)
        return out

    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2.0 * tp, 2.0 * tp + fp + fn)

    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(label_names)
    }

    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "macro_f1": float(f1.mean()),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "labels": label_names,
    }


def _check_count(value: object, name: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    try:
        iv = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}") from None
    if iv < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {iv}")
    return iv


def efficiency_metrics(
    n_examples: int,
    seconds: float,
    trainable_parameters: int,
    artifact_bytes: int | None,
) -> dict:
    """Throughput and size figures for a run, as a JSON-serialisable dict.

    Returns::

        {
          "n_examples": int,
          "seconds": float,
          "examples_per_second": float | None,   # None when seconds == 0
          "seconds_per_example": float | None,   # None when n_examples == 0
          "trainable_parameters": int,
          "artifact_bytes": int | None,          # None when there is no artifact
        }

    The keys ``examples_per_second``, ``trainable_parameters``, ``artifact_bytes`` and
    ``seconds`` are the ones :func:`prompttune.report.write_report` shows, so the
    result can be merged into a :func:`classification_metrics` dict with ``dict.update``.

    Raises:
        ValueError: a negative or non-integer count, or a negative / non-finite ``seconds``.
    """
    n = _check_count(n_examples, "n_examples")
    params = _check_count(trainable_parameters, "trainable_parameters")
    size = None if artifact_bytes is None else _check_count(artifact_bytes, "artifact_bytes")
    if isinstance(seconds, (bool, np.bool_)):
        raise ValueError(f"seconds must be a non-negative number, got {seconds!r}")
    try:
        secs = float(seconds)
    except (TypeError, ValueError):
        raise ValueError(f"seconds must be a non-negative number, got {seconds!r}") from None
    if not math.isfinite(secs) or secs < 0:
        raise ValueError(f"seconds must be a finite non-negative number, got {seconds!r}")

    return {
        "n_examples": n,
        "seconds": secs,
        "examples_per_second": (n / secs) if secs > 0 else None,
        "seconds_per_example": (secs / n) if n > 0 else None,
        "trainable_parameters": params,
        "artifact_bytes": size,
    }


# ---- generation: ROUGE, BLEU, chrF --------------------------------------------------------------
# CJK ideographs, kana, hangul and CJK punctuation: one token each (Chinese has no spaces between words).
_CJK = ("\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u3130-\u318f\u31a0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
        "\uac00-\ud7af\uf900-\ufaff\uff00-\uffef")


def has_cjk(text: str, share: float = 0.3) -> bool:
    """True when at least ``share`` of the non-space characters of ``text`` are CJK."""
    import re

    chars = [c for c in text if not c.isspace()]
    if not chars:
        return False
    return len(re.findall(f"[{_CJK}]", text)) / len(chars) >= share


class RougeTokenizer:
    """rouge-score's default tokenisation, extended past ASCII: lower-case, words of letters/digits, Porter stems
    for ASCII words of more than 3 letters (as ``use_stemmer=True``), and every CJK character a token of its own.
    On ASCII text it gives exactly rouge-score's default tokens; on German it keeps umlauts, which the default
    tokenizer drops; on Chinese it scores characters, the usual practice for Chinese ROUGE."""

    def __init__(self, stem: bool = True):
        import re

        self._re = re.compile(f"[{_CJK}]|[^\\W_]+")
        self._stemmer = None
        if stem:
            from nltk.stem import porter

            self._stemmer = porter.PorterStemmer()

    def tokenize(self, text: str) -> list[str]:
        toks = self._re.findall(text.lower())
        if self._stemmer is not None:
            toks = [self._stemmer.stem(t) if len(t) > 3 and t.isascii() and t.isalnum() else t for t in toks]
        return toks


def generation_metrics(predictions: Sequence[str], references: Sequence[str], *, language: str = "auto",
                       error_rates: bool = False) -> dict:
    """ROUGE-1/2/L F1 (mean over examples, x100), sacreBLEU corpus BLEU and chrF (0-100); with ``error_rates`` (speech
    recognition) also jiwer's corpus WER and CER (0-1, lower is better) on case- and punctuation-folded text.

    ``language``: ``zh`` (or ``auto`` with mostly-CJK references) uses sacreBLEU's ``zh`` tokenizer and scores
    ROUGE by characters; anything else uses sacreBLEU's default ``13a``."""
    import sacrebleu
    from rouge_score import rouge_scorer

    preds = ["" if p is None else str(p) for p in predictions]
    refs = [str(r) for r in references]
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions for {len(refs)} references")
    if not refs:
        raise ValueError("no references to score")
    zh = language == "zh" or (language == "auto" and has_cjk("".join(refs)))
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=RougeTokenizer())
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for p, r in zip(preds, refs):
        s = scorer.score(r, p)
        for k in sums:
            sums[k] += s[k].fmeasure
    tokenize = "zh" if zh else "13a"
    bleu = sacrebleu.metrics.BLEU(tokenize=tokenize).corpus_score(preds, [refs])
    chrf = sacrebleu.metrics.CHRF().corpus_score(preds, [refs])
    out = {k: 100.0 * v / len(refs) for k, v in sums.items()}
    out.update(bleu=float(bleu.score), chrf=float(chrf.score), bleu_tokenize=tokenize, rouge_tokens="characters" if zh else "words",
               exact_match=100.0 * sum(p.strip() == r.strip() for p, r in zip(preds, refs)) / len(refs))
    if error_rates:
        out.update(error_rates_of(preds, refs))
    return out


def error_rates_of(predictions: Sequence[str], references: Sequence[str]) -> dict:
    """Word and character error rates (jiwer, over the whole corpus) after lower-casing and dropping punctuation,
    as Whisper's papers compare transcripts. CER ignores spaces next to CJK characters (Chinese has none between
    words, so a comma turned into a space is not an error); CER is the measure for Chinese, WER is not."""
    import re

    try:
        import jiwer
    except ImportError:
        from .errors import ConfigError

        raise ConfigError("speech recognition is scored by jiwer, which is not installed", where="metrics",
                          fix="pip install 'prompttune[speech]' (or pip install jiwer)") from None

    def norm(t: str) -> str:
        t = "".join(ch if ch.isalnum() or ch.isspace() else " " for ch in t.lower())
        return " ".join(t.split())

    refs = [norm(r) for r in references]
    preds = [norm(p) for p in predictions]
    keep = [i for i, r in enumerate(refs) if r]  # jiwer refuses empty references
    if not keep:
        return {"wer": None, "cer": None}
    refs, preds = [refs[i] for i in keep], [preds[i] for i in keep]
    chars = [[re.sub(rf"\s*([{_CJK}])\s*", r"\1", t) for t in texts] for texts in (refs, preds)]
    return {"wer": float(jiwer.wer(refs, preds)), "cer": float(jiwer.cer(*chars))}


def mcnemar(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> dict:
    """McNemar's exact test of two classifiers on the same test items (``a_correct[i]``: did A get item i right).

    ``b`` counts items only A got right, ``c`` items only B got right; under "equally accurate" the discordant items
    split as Binomial(b + c, 1/2), and the two-sided p-value is ``min(1, 2 * P[X <= min(b, c)])`` (the exact form
    recommended for few discordant pairs; statsmodels' ``mcnemar(exact=True)`` gives the same)."""
    if len(a_correct) != len(b_correct):
        raise ValueError(f"McNemar's test pairs the same items: {len(a_correct)} against {len(b_correct)} results")
    b = sum(1 for x, y in zip(a_correct, b_correct) if x and not y)
    c = sum(1 for x, y in zip(a_correct, b_correct) if y and not x)
    n = b + c
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n if n else 1.0
    return {"b": b, "c": c, "n": len(a_correct), "p": min(1.0, 2 * tail)}
