"""Human-readable evaluation reports (Markdown + confusion-matrix PNG) and JSON output.

Every file is written atomically (see :mod:`prompttune.files`).
"""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["write_report", "write_json", "REPORT_NAME", "CONFUSION_PNG_NAME"]

REPORT_NAME = "report.md"
CONFUSION_PNG_NAME = "confusion_matrix.png"
TRAINING_PNG_NAME = "training_curve.png"

# Longest text shown in one cell of the sample-predictions table.
_MAX_SAMPLE_TEXT = 300
# Longest label name drawn on the confusion-matrix axes.
_MAX_AXIS_LABEL = 24

_REQUIRED_METRIC_KEYS = ("n", "accuracy", "macro_f1", "per_class", "confusion_matrix", "labels")


from .files import atomic_write_bytes, atomic_write_text, write_json  # noqa: E402  (write_json: part of this API)


# --------------------------------------------------------------------------- markdown helpers

_NEWLINES = re.compile(r"\r\n|\r|\n")


def _md_cell(value: Any) -> str:
    """Render a value for one Markdown table cell.

    Backslashes, ``|``, ``<`` and ``>`` are backslash-escaped (so cell text can neither
    split the row nor inject HTML) and line breaks become ``<br>``.
    """
    text = "" if value is None else str(value)
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "\\<").replace(">", "\\>")
    text = _NEWLINES.sub("<br>", text)
    return text


def md_table(header: list[Any], rows: list[list[Any]], align: list[str] | None = None) -> str:
    align = align or ["l"] * len(header)
    sep = {"l": "---", "r": "---:", "c": ":---:"}
    lines = [
        "| " + " | ".join(_md_cell(h) for h in header) + " |",
        "| " + " | ".join(sep[a] for a in align) + " |",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
    return "\n".join(lines)


def _number(value: Any, cast):
    """``value`` as a number (``cast``) and None, or None and the text shown instead ("—" for no value)."""
    if value is None:
        return None, "—"
    try:
        return cast(value), None
    except (TypeError, ValueError):
        return None, str(value)


def _fmt_float(value: Any, digits: int = 4) -> str:
    f, shown = _number(value, float)
    if shown is not None:
        return shown
    if math.isnan(f):
        return "nan"
    return f"{f:.{digits}f}"


def _fmt_int(value: Any) -> str:
    n, shown = _number(value, int)
    return shown if shown is not None else str(n)


def _fmt_bytes(value: Any) -> str:
    """``123456`` -> ``"123456 (120.6 KiB)"``; small sizes stay bare."""
    n, shown = _number(value, int)
    if shown is not None:
        return shown
    if abs(n) < 1024:
        return str(n)
    size = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if abs(size) < 1024 or unit == "TiB":
            return f"{n} ({size:.1f} {unit})"
    return str(n)  # unreachable


def _one_line(text: str) -> str:
    return " ".join(_NEWLINES.sub(" ", str(text)).split())


def _fence_for(text: str) -> str:
    """A backtick fence longer than any backtick run inside ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _plain(obj: Any) -> Any:
    """Recursively convert ``obj`` to YAML/JSON-safe builtins (str keys, lists, scalars)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        try:
            return [_plain(v) for v in sorted(obj)]
        except TypeError:
            return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    model_dump = getattr(obj, "model_dump", None)  # pydantic models
    if callable(model_dump):
        try:
            return _plain(model_dump(mode="json"))
        except TypeError:
            return _plain(model_dump())
    tolist = getattr(obj, "tolist", None)  # numpy / torch
    if callable(tolist):
        return _plain(tolist())
    return str(obj)


def _details_block(details: Mapping[str, Any]) -> str:
    import yaml

    body = yaml.safe_dump(
        _plain(details), allow_unicode=True, sort_keys=False, default_flow_style=False, width=100
    ).rstrip("\n")
    fence = _fence_for(body)
    return f"{fence}yaml\n{body}\n{fence}"


def _label_name(value: Any, labels: list[str]) -> Any:
    """Map an integer label id to its name; leave names (and unknown ids) as they are."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) or type(value).__name__.startswith(("int", "uint")):
        try:
            idx = int(value)
        except (TypeError, ValueError):
            return value
        if 0 <= idx < len(labels):
            return labels[idx]
    return value


def _pick(sample: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in sample:
            return sample[key]
    return None


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- confusion PNG


def _cjk_capable_families() -> list[str]:
    """Installed font families likely to cover CJK, for per-glyph fallback."""
    from matplotlib import font_manager

    wanted = (
        "Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans SC", "Source Han Sans SC",
        "Source Han Sans CN", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback",
        "SimHei", "Microsoft YaHei", "PingFang SC", "Hiragino Sans GB", "Heiti SC",
        "Arial Unicode MS", "AR PL UMing CN", "AR PL UKai CN",
    )
    installed = {f.name for f in font_manager.fontManager.ttflist}
    return [name for name in wanted if name in installed]


def _confusion_png(matrix: list[list[int]], labels: list[str], title: str) -> bytes:
    """Draw the confusion matrix with the Agg backend (no pyplot, no global backend change)."""
    import matplotlib
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    cm = np.asarray(matrix, dtype=np.int64).reshape(len(labels), len(labels))
    k = len(labels)
    names = [_truncate(_one_line(label), _MAX_AXIS_LABEL) for label in labels]
    side = min(max(4.5, 0.6 * k + 2.5), 30.0)
    annot_size = max(5.0, min(11.0, 120.0 / max(k, 1)))
    families = ["DejaVu Sans", *_cjk_capable_families()]

    with warnings.catch_warnings(), matplotlib.rc_context(
        {"font.family": "sans-serif", "font.sans-serif": families}
    ):
        # Label names in scripts the installed fonts lack (e.g. Chinese without a CJK font)
        # render as boxes; that is acceptable, the warnings are noise.
        warnings.filterwarnings("ignore", message=r".*[Gg]lyph.*missing from.*")
        warnings.filterwarnings("ignore", message=r".*[Mm]issing.*glyph.*")
        warnings.filterwarnings("ignore", message=r".*findfont.*")

        fig = Figure(figsize=(side, side * 0.9 + 0.5), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        vmax = max(int(cm.max()) if cm.size else 0, 1)
        image = ax.imshow(cm, cmap="Blues", vmin=0, vmax=vmax, interpolation="nearest")
        colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        colorbar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        ax.set_xticklabels(names, rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center")
        ax.set_yticklabels(names)
        ax.set_xlabel("Predicted label")
        ax.set_ylabel("True label")
        ax.set_title(_truncate(_one_line(title), 80) or "Confusion matrix")
        threshold = vmax / 2.0
        for i in range(k):
            for j in range(k):
                value = int(cm[i, j])
                ax.text(
                    j, i, str(value), ha="center", va="center", fontsize=annot_size,
                    color="white" if value > threshold else "black",
                )
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    return buf.getvalue()


# --------------------------------------------------------------------------- report


def _training_png(history: list[Mapping[str, Any]], best_step: Any) -> bytes:
    """Dev accuracy and loss against the training step, the kept step marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [h["step"] for h in history]
    fig = Figure(figsize=(5.5, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(steps, [h.get("accuracy") for h in history], marker="o", color="tab:blue", label="dev accuracy")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("dev accuracy", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(steps, [h.get("loss") for h in history], marker="s", color="tab:orange", label="dev loss")
    ax2.set_ylabel("dev loss", color="tab:orange")
    if best_step is not None:
        ax.axvline(best_step, color="grey", linestyle="--", linewidth=1)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _validate_metrics(metrics: Mapping[str, Any]) -> tuple[list[str], list[list[int]]]:
    if not isinstance(metrics, Mapping):
        raise ValueError(f"metrics must be a dict, got {type(metrics).__name__}")
    missing = [key for key in _REQUIRED_METRIC_KEYS if key not in metrics]
    if missing:
        raise ValueError(
            f"metrics is missing {missing}; pass the dict returned by "
            "prompttune.metrics.classification_metrics (optionally updated with efficiency_metrics)"
        )
    labels = [str(label) for label in metrics["labels"]]
    matrix = [[int(c) for c in row] for row in metrics["confusion_matrix"]]
    if len(matrix) != len(labels) or any(len(row) != len(labels) for row in matrix):
        raise ValueError(
            f"confusion_matrix must be {len(labels)}x{len(labels)} to match labels, got "
            f"{len(matrix)} rows of lengths {[len(row) for row in matrix]}"
        )
    return labels, matrix


def _headline_rows(metrics: Mapping[str, Any]) -> list[list[str]]:
    rows = [
        ["accuracy", _fmt_float(metrics["accuracy"])],
        ["macro-F1", _fmt_float(metrics["macro_f1"])],
        ["n", _fmt_int(metrics["n"])],
    ]
    if "examples_per_second" in metrics:
        rows.append(["examples/s", _fmt_float(metrics["examples_per_second"], 2)])
    if "seconds" in metrics:
        rows.append(["seconds", _fmt_float(metrics["seconds"], 2)])
    if "trainable_parameters" in metrics:
        rows.append(["trainable parameters", _fmt_int(metrics["trainable_parameters"])])
    if "artifact_bytes" in metrics:
        rows.append(["artifact bytes", _fmt_bytes(metrics["artifact_bytes"])])
    zero_shot = metrics.get("zero_shot")
    if isinstance(zero_shot, Mapping):
        if zero_shot.get("accuracy") is not None:
            rows.append(["zero-shot accuracy", _fmt_float(zero_shot["accuracy"])])
            try:
                gain = float(metrics["accuracy"]) - float(zero_shot["accuracy"])
                rows.append(["accuracy gain over zero-shot", f"{gain:+.4f}"])
            except (TypeError, ValueError):
                pass
        if zero_shot.get("macro_f1") is not None:
            rows.append(["zero-shot macro-F1", _fmt_float(zero_shot["macro_f1"])])
    return rows


def _samples_table(samples: list[Mapping[str, Any]], labels: list[str]) -> str:
    rows = []
    for sample in samples:
        if not isinstance(sample, Mapping):
            raise ValueError(f"each sample must be a dict, got {type(sample).__name__}")
        text = _pick(sample, "text", "input", "prompt")
        gold = _label_name(_pick(sample, "gold", "label", "y_true", "target"), labels)
        pred = _label_name(_pick(sample, "predicted", "pred", "prediction", "y_pred"), labels)
        prob = _pick(sample, "probability", "prob", "confidence", "score")
        text_s = _truncate("" if text is None else str(text), _MAX_SAMPLE_TEXT)
        prob_s = "—" if prob is None else _fmt_float(prob)
        rows.append([text_s, "" if gold is None else gold, "" if pred is None else pred, prob_s])
    return md_table(["text", "gold", "predicted", "probability"], rows, ["l", "l", "l", "r"])


def write_report(
    out_dir: str | Path,
    metrics: dict,
    *,
    title: str,
    details: dict | None = None,
    samples: list[dict] | None = None,
) -> Path:
    """Write ``report.md`` and ``confusion_matrix.png`` into ``out_dir``; return the report path.

    Args:
        out_dir: directory to write into (created if missing).
        metrics: a :func:`prompttune.metrics.classification_metrics` dict, optionally with
            ``examples_per_second``, ``seconds``, ``trainable_parameters``, ``artifact_bytes``
            (see :func:`prompttune.metrics.efficiency_metrics`) and ``zero_shot`` (the
            classification metrics of the untuned prompt).
        title: the report's heading.
        details: shown as a fenced YAML block (e.g. the run config).
        samples: rows for a sample-predictions table. Each dict may have ``text``,
            ``gold``, ``predicted`` (label names, or integer ids mapped through
            ``metrics["labels"]``) and ``probability``.

    Raises:
        ValueError: ``metrics`` lacks the classification keys or its confusion matrix
            does not match its labels.
    """
    labels, matrix = _validate_metrics(metrics)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    heading = _one_line(title) or "Evaluation report"
    parts: list[str] = [f"# {heading}", ""]

    parts += ["## Summary", "", md_table(["metric", "value"], _headline_rows(metrics), ["l", "r"]), ""]

    per_class = metrics["per_class"]
    pc_rows = []
    for label in labels:
        stats = per_class.get(label, {}) if isinstance(per_class, Mapping) else {}
        pc_rows.append([
            label,
            _fmt_float(stats.get("precision")),
            _fmt_float(stats.get("recall")),
            _fmt_float(stats.get("f1")),
            _fmt_int(stats.get("support")),
        ])
    parts += [
        "## Per-class metrics",
        "",
        md_table(["label", "precision", "recall", "F1", "support"], pc_rows, ["l", "r", "r", "r", "r"]),
        "",
    ]

    cm_header = ["true ↓ / predicted →", *labels]
    cm_rows = [[label, *row] for label, row in zip(labels, matrix)]
    parts += [
        "## Confusion matrix",
        "",
        "Rows are the true label, columns the predicted label.",
        "",
        md_table(cm_header, cm_rows, ["l"] + ["r"] * len(labels)),
        "",
        f"![confusion matrix]({CONFUSION_PNG_NAME})",
        "",
    ]

    training = metrics.get("training") or {}
    history = training.get("history") or []
    if history:
        atomic_write_bytes(out / TRAINING_PNG_NAME, _training_png(history, training.get("best_step")))
        parts += [
            "## Training",
            "",
            f"{training.get('steps')} steps in {_fmt_float(training.get('seconds'), 1)} s; the state of step "
            f"{training.get('best_step')} (best on dev) was kept.",
            "",
            f"![training curve]({TRAINING_PNG_NAME})",
            "",
            md_table(["step", "dev accuracy", "dev macro-F1", "dev loss"],
                      [[h["step"], _fmt_float(h.get("accuracy")), _fmt_float(h.get("macro_f1")), _fmt_float(h.get("loss"))]
                       for h in history], ["r", "r", "r", "r"]),
            "",
        ]

    if details:
        parts += ["## Details", "", _details_block(details), ""]

    if samples:
        parts += ["## Sample predictions", "", _samples_table(samples, labels), ""]

    png = _confusion_png(matrix, labels, heading)
    atomic_write_bytes(out / CONFUSION_PNG_NAME, png)
    return atomic_write_text(out / REPORT_NAME, "\n".join(parts).rstrip("\n") + "\n")


# --------------------------------------------------------------------------- generation report

_GENERATION_ROWS = (("WER (speech; lower is better)", "wer"), ("CER (speech; lower is better)", "cer"), ("ROUGE-1 (F, x100)", "rouge1"), ("ROUGE-2 (F, x100)", "rouge2"), ("ROUGE-L (F, x100)", "rougeL"),
                    ("BLEU (sacreBLEU)", "bleu"), ("chrF (sacreBLEU)", "chrf"), ("exact match (%)", "exact_match"),
                    ("loss per target token (teacher-forced)", "loss"), ("tokens / second", "tokens_per_second"),
                    ("examples / second", "examples_per_second"))


def write_generation_report(out_dir: str | Path, metrics: dict, *, title: str, details: dict | None = None,
                            samples: list[dict] | None = None) -> Path:
    """Write ``report.md`` for a generation run: ROUGE / BLEU / chrF (tuned and, if given, zero-shot), speed,
    size, the dev-loss curve and sample (source, reference, output) rows."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    heading = _one_line(title) or "Generation report"
    zero = metrics.get("zero_shot") or {}
    header = ["metric", "tuned"] + (["zero-shot"] if zero else [])
    rows = []
    for name, key in _GENERATION_ROWS:
        if key in metrics or key in zero:
            digits = 1 if key.endswith("per_second") else 3 if key in ("wer", "cer") else 2 if key != "loss" else 4
            rows.append([name, _fmt_float(metrics.get(key), digits)] + ([_fmt_float(zero.get(key), digits)] if zero else []))
    rows.append(["test examples", _fmt_int(metrics.get("n"))] + ([_fmt_int(zero.get("n"))] if zero else []))
    rows.append(["trainable parameters", _fmt_int(metrics.get("trainable_parameters"))] + (["0"] if zero else []))
    rows.append(["artifact bytes", _fmt_bytes(metrics.get("artifact_bytes"))] + (["—"] if zero else []))
    parts: list[str] = [f"# {heading}", "", "## Summary", "", md_table(header, rows, ["l"] + ["r"] * (len(header) - 1)), "",
                        f"BLEU tokenizer: `{metrics.get('bleu_tokenize', '13a')}`; ROUGE over {metrics.get('rouge_tokens', 'words')}.", ""]
    training = metrics.get("training") or {}
    history = training.get("history") or []
    if history:
        parts += ["## Training", "",
                  f"{training.get('steps')} steps in {_fmt_float(training.get('seconds'), 1)} s; the state of step "
                  f"{training.get('best_step')} (lowest dev loss per target token) was kept.", "",
                  md_table(["step", "dev loss"], [[h["step"], _fmt_float(h.get("loss"))] for h in history], ["r", "r"]), ""]
    if details:
        parts += ["## Details", "", _details_block(details), ""]
    if samples:
        srows = [[_truncate(str(s.get("source", "")), _MAX_SAMPLE_TEXT), _truncate(str(s.get("reference", "")), _MAX_SAMPLE_TEXT),
                  _truncate(str(s.get("output", "")), _MAX_SAMPLE_TEXT)]
                 + ([_truncate(str(s.get("zero_shot", "")), _MAX_SAMPLE_TEXT)] if "zero_shot" in s else []) for s in samples]
        sheader = ["source", "reference", "output"] + (["zero-shot output"] if samples and "zero_shot" in samples[0] else [])
        parts += ["## Samples", "", md_table(sheader, srows), ""]
    return atomic_write_text(out / REPORT_NAME, "\n".join(parts).rstrip("\n") + "\n")
