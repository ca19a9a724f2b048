"""Tests for prompttune.metrics and prompttune.report.

Expected values are computed by hand in the comments, not with the code under test.
"""

from __future__ import annotations

import json
import os
import warnings

import pytest

from prompttune.metrics import classification_metrics, efficiency_metrics
from prompttune.report import write_json, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# A small 3-class case.
#   idx:     0  1  2  3  4  5  6  7  8  9
#   true:    0  0  0  0  1  1  1  2  2  2
#   pred:    0  0  1  2  1  1  0  2  2  1
# Confusion (rows true, cols pred):
#   true 0: [2, 1, 1]
#   true 1: [1, 2, 0]
#   true 2: [0, 1, 2]
LABELS3 = ["neg", "neu", "pos"]
Y_TRUE3 = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
Y_PRED3 = [0, 0, 1, 2, 1, 1, 0, 2, 2, 1]


def test_three_class_accuracy_f1_per_class_and_confusion_by_hand():
    m = classification_metrics(Y_TRUE3, Y_PRED3, LABELS3)

    assert m["n"] == 10
    assert m["labels"] == LABELS3
    assert m["confusion_matrix"] == [[2, 1, 1], [1, 2, 0], [0, 1, 2]]
    # correct = 2 + 2 + 2 = 6 of 10
    assert m["accuracy"] == pytest.approx(0.6)

    # neg: tp=2, predicted=3 (col 0), support=4 -> P=2/3, R=1/2, F1=2*2/(2*2+1+2)=4/7
    # neu: tp=2, predicted=4 (col 1), support=3 -> P=1/2, R=2/3, F1=4/(4+2+1)=4/7
    # pos: tp=2, predicted=3 (col 2), support=3 -> P=2/3, R=2/3, F1=4/(4+1+1)=2/3
    pc = m["per_class"]
    assert set(pc) == set(LABELS3)
    assert pc["neg"] == pytest.approx({"precision": 2 / 3, "recall": 1 / 2, "f1": 4 / 7, "support": 4})
    assert pc["neu"] == pytest.approx({"precision": 1 / 2, "recall": 2 / 3, "f1": 4 / 7, "support": 3})
    assert pc["pos"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert all(isinstance(pc[k]["support"], int) for k in pc)
    # macro-F1 = (4/7 + 4/7 + 2/3) / 3 = (12/21 + 12/21 + 14/21) / 3 = 38/63
    assert m["macro_f1"] == pytest.approx(38 / 63)


def test_metrics_are_json_serialisable_plain_python():
    m = classification_metrics(Y_TRUE3, Y_PRED3, LABELS3)
    again = json.loads(json.dumps(m))
    assert again == m
    assert type(m["accuracy"]) is float and type(m["n"]) is int
    assert all(type(c) is int for row in m["confusion_matrix"] for c in row)


def test_zero_division_class_counts_zero_in_macro_f1():
    # Label "c" (id 2) never occurs in y_true and is never predicted;
    # label "b" (id 1) is predicted once but has no support.
    y_true = [0, 0, 0, 0]
    y_pred = [0, 0, 0, 1]
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    # a: tp=3, predicted=3, support=4 -> P=1, R=3/4, F1=6/(6+0+1)=6/7
    assert m["per_class"]["a"] == pytest.approx({"precision": 1.0, "recall": 0.75, "f1": 6 / 7, "support": 4})
    # b: tp=0, fp=1, support=0 -> P=0/1=0, R=0/0 -> 0, F1=0
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # c: nothing at all -> everything 0/0 -> 0
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # sklearn f1_score(average="macro", zero_division=0, labels=[0,1,2]) = (6/7 + 0 + 0) / 3
    assert m["macro_f1"] == pytest.approx(2 / 7)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["confusion_matrix"] == [[3, 1, 0], [0, 0, 0], [0, 0, 0]]


def test_perfect_and_empty_predictions():
    m = classification_metrics([1, 0, 1], [1, 0, 1], ["x", "y"])
    assert m["accuracy"] == 1.0 and m["macro_f1"] == 1.0
    empty = classification_metrics([], [], ["x", "y"])
    assert empty["n"] == 0 and empty["accuracy"] == 0.0 and empty["macro_f1"] == 0.0
    assert empty["confusion_matrix"] == [[0, 0], [0, 0]]


def test_mismatched_lengths_raise_value_error():
    with pytest.raises(ValueError, match="length"):
        classification_metrics([0, 1, 2], [0, 1], LABELS3)


@pytest.mark.parametrize(
    "y_true, y_pred",
    [([0, 3], [0, 1]), ([0, 1], [0, -1]), ([0, 1], [0, 1.5]), ([0, "1"], [0, 1])],
)
def test_out_of_range_or_non_integer_ids_raise_value_error(y_true, y_pred):
    with pytest.raises(ValueError):
        classification_metrics(y_true, y_pred, LABELS3)


def test_bad_labels_raise_value_error():
    with pytest.raises(ValueError):
        classification_metrics([0], [0], [])
    with pytest.raises(ValueError, match="unique"):
        classification_metrics([0], [0], ["a", "a"])


def test_efficiency_metrics():
    e = efficiency_metrics(200, 4.0, 12_288, 49_152)
    assert e["examples_per_second"] == pytest.approx(50.0)
    assert e["seconds_per_example"] == pytest.approx(0.02)
    assert e["trainable_parameters"] == 12_288
    assert e["artifact_bytes"] == 49_152
    assert e["seconds"] == 4.0 and e["n_examples"] == 200
    json.dumps(e)
    zero = efficiency_metrics(0, 0.0, 0, None)
    assert zero["examples_per_second"] is None and zero["seconds_per_example"] is None
    assert zero["artifact_bytes"] is None
    with pytest.raises(ValueError):
        efficiency_metrics(-1, 1.0, 0, None)
    with pytest.raises(ValueError):
        efficiency_metrics(1, -1.0, 0, None)
    with pytest.raises(ValueError):
        efficiency_metrics(1, float("nan"), 0, None)


def _full_metrics():
    m = classification_metrics(Y_TRUE3, Y_PRED3, LABELS3)
    m.update(efficiency_metrics(10, 0.5, 12_288, 49_152))
    m["zero_shot"] = classification_metrics(Y_TRUE3, [0] * 10, LABELS3)  # accuracy 4/10
    return m


def test_write_report_creates_markdown_with_numbers_and_png(tmp_path):
    out = tmp_path / "run"  # does not exist yet
    path = write_report(
        out,
        _full_metrics(),
        title="SST-3 soft prompt",
        details={"model": "tiny-gpt", "lr": 0.3, "n_tokens": 20, "nested": {"seed": 13}},
        samples=[
            {"text": "great film", "gold": 2, "predicted": 2, "probability": 0.91},
            {"text": "meh", "gold": "neu", "predicted": "neg", "probability": 0.4},
        ],
    )
    assert path == out / "report.md"
    md = path.read_text(encoding="utf-8")
    assert md.startswith("# SST-3 soft prompt\n")
    # headline numbers: accuracy 0.6, macro-F1 38/63 = 0.6032, n 10, 20 ex/s, params, bytes
    assert "| accuracy | 0.6000 |" in md
    assert "| macro-F1 | 0.6032 |" in md
    assert "| n | 10 |" in md
    assert "| examples/s | 20.00 |" in md
    assert "| trainable parameters | 12288 |" in md
    assert "49152" in md
    assert "| zero-shot accuracy | 0.4000 |" in md
    # per-class row for "pos": P = R = F1 = 2/3, support 3
    assert "| pos | 0.6667 | 0.6667 | 0.6667 | 3 |" in md
    # confusion matrix as a markdown table, row "neg" = [2, 1, 1]
    assert "| neg | 2 | 1 | 1 |" in md
    assert "![confusion matrix](confusion_matrix.png)" in md
    # details as YAML, samples with ids mapped to label names
    assert "```yaml" in md and "lr: 0.3" in md and "seed: 13" in md
    assert "| great film | pos | pos | 0.9100 |" in md
    assert "| meh | neu | neg | 0.4000 |" in md

    png = out / "confusion_matrix.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert png.stat().st_size > 1000


def test_write_report_chinese_labels_without_crash_or_glyph_warnings(tmp_path):
    labels = ["正面", "负面", "中性"]
    m = classification_metrics([0, 1, 2, 0], [0, 1, 1, 2], labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing-glyph warning would fail the test
        path = write_report(tmp_path, m, title="中文 情感分类", samples=[{"text": "很好", "gold": 0, "predicted": 0}])
    md = path.read_text(encoding="utf-8")
    # 正面: gold twice (ids 0, 3), predicted once and correctly -> P=1/1, R=1/2, F1=2/(2+0+1)=2/3
    assert "| 正面 | 1.0000 | 0.5000 | 0.6667 | 2 |" in md
    assert "# 中文 情感分类" in md
    assert "| 很好 | 正面 | 正面 | — |" in md
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:8] == PNG_MAGIC


def test_no_temp_files_left_behind_and_overwrite_works(tmp_path):
    m = _full_metrics()
    write_report(tmp_path, m, title="first")
    write_report(tmp_path, m, title="second")  # overwrites in place
    write_json(tmp_path / "metrics.json", m)
    assert sorted(os.listdir(tmp_path)) == ["confusion_matrix.png", "metrics.json", "report.md"]
    assert (tmp_path / "report.md").read_text(encoding="utf-8").startswith("# second\n")
    # files get normal permissions (not mkstemp's 0600)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o666 & ~umask


def test_markdown_cells_escape_pipes_and_newlines(tmp_path):
    labels = ["yes|no", "other"]
    m = classification_metrics([0, 1], [0, 1], labels)
    samples = [{"text": "a | b\nsecond line", "gold": "yes|no", "predicted": 1, "probability": 0.5}]
    md = write_report(tmp_path, m, title="pipes", samples=samples).read_text(encoding="utf-8")
    assert "| yes\\|no | 1.0000 | 1.0000 | 1.0000 | 1 |" in md
    assert "| a \\| b<br>second line | yes\\|no | other | 0.5000 |" in md
    # Every table row has the same number of unescaped pipes as its header.
    import re

    for block in md.split("\n\n"):
        rows = [line for line in block.splitlines() if line.startswith("|")]
        if rows:
            counts = {len(re.findall(r"(?<!\\)\|", row)) for row in rows}
            assert len(counts) == 1, block


def test_write_report_rejects_non_metrics_dict(tmp_path):
    with pytest.raises(ValueError, match="missing"):
        write_report(tmp_path, {"accuracy": 1.0}, title="bad")
    assert not (tmp_path / "report.md").exists()


def test_write_json_roundtrip_unicode_and_numpy(tmp_path):
    import numpy as np

    path = write_json(tmp_path / "sub" / "m.json", {"标签": "正面", "x": np.float32(0.5), "a": np.arange(3)})
    text = path.read_text(encoding="utf-8")
    assert "正面" in text and text.endswith("\n")
    assert json.loads(text) == {"标签": "正面", "x": 0.5, "a": [0, 1, 2]}
    assert os.listdir(tmp_path / "sub") == ["m.json"]
