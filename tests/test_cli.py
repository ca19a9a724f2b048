"""The command line: train -> eval -> predict on a tiny local model and CSV, and clear errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from conftest import run_cli, toy_rows


run = run_cli


def _csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["review", "sentiment"])
        w.writeheader()
        for r in rows:
            w.writerow({"review": r["text"], "sentiment": r["label"]})
    return path


@pytest.fixture
def workdir(tmp_path, saved_tiny):
    _csv(tmp_path / "train.csv", toy_rows(40, seed=1))
    _csv(tmp_path / "test.csv", toy_rows(20, seed=2))
    cfg = {
        "model": {"name": saved_tiny("llama")},
        "prompt": {"template": "Review: {text} Sentiment: {mask}", "verbalizer": {"negative": "bad", "positive": "good"}},
        "method": {"name": "soft-prompt", "num_tokens": 4},
        "data": {"train": str(tmp_path / "train.csv"), "test": str(tmp_path / "test.csv"), "columns": {"text": "review"},
                 "label_column": "sentiment", "shots_per_class": 8},
        "train": {"max_steps": 4, "lr": 0.05, "progress": False, "eval_every": 2},
        "zero_shot_baseline": True,
        "output": str(tmp_path / "out"),
    }
    import yaml

    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


def test_a_refit_run_records_both_passes_and_leaves_no_checkpoint(monkeypatch, capsys, workdir):
    code, out, err = run(monkeypatch, capsys, "train", workdir / "run.yaml", "--set", "train.refit=true", "--set", "train.lr=0.05",
                         "--set", "train.max_steps=12")
    assert code == 0, err
    m = json.loads((workdir / "out" / "metrics.json").read_text())["training"]
    assert m["best_step"] > 0, m["history"]  # dev loss 1.29 untrained, 1.06 at step 4
    assert m["refit"]["examples"] == 32 and m["refit"]["steps"] == round(m["best_step"] * 32 / 16)
    assert "refit: trained again from the initial prompt on train + dev (32 examples)" in err
    assert not [p for p in workdir.iterdir() if p.name.startswith(".out")]  # neither pass's checkpoint is left

def test_train_eval_predict_from_a_config_file(monkeypatch, capsys, workdir):
    code, out, err = run(monkeypatch, capsys, "train", workdir / "run.yaml", "--set", "train.seed=3", "--json")
    assert code == 0, err
    res = json.loads(out)
    out_dir = workdir / "out"
    for name in ("prompt.json", "prompt.safetensors", "metrics.json", "report.md", "confusion_matrix.png", "training_curve.png", "predictions.jsonl",
                 "config.yaml"):
        assert (out_dir / name).exists(), name
    assert not (out_dir / "checkpoint").exists() and not (out_dir.parent / f".{out_dir.name}.resume").exists()  # removed once done
    assert not [p for p in out_dir.parent.iterdir() if p.name.startswith(f".{out_dir.name}.")]  # no staging directory left
    assert res["n"] == 20 and 0 <= res["accuracy"] <= 1 and "zero_shot" in res
    assert res["trainable_parameters"] == 4 * 32
    assert "train.seed" not in out and "seed: 3" in (out_dir / "config.yaml").read_text()

    code, out, err = run(monkeypatch, capsys, "eval", out_dir, "--data", workdir / "test.csv", "--column", "text=review",
                         "--label-column", "sentiment", "--json")
    assert code == 0, err
    m = json.loads(out)
    assert {"accuracy", "macro_f1", "examples_per_second", "n"} <= set(m) and m["n"] == 20
    assert m["accuracy"] == pytest.approx(res["accuracy"])

    (workdir / "in.jsonl").write_text('{"text": "the film was good"}\n{"text": "bad plot"}\n')
    code, out, err = run(monkeypatch, capsys, "predict", out_dir, "a good movie", "--input", workdir / "in.jsonl", "--json")
    assert code == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert len(lines) == 3 and all(set(x["probabilities"]) == {"negative", "positive"} for x in lines)
    assert all(abs(sum(x["probabilities"].values()) - 1) < 1e-4 for x in lines)


@pytest.mark.parametrize("args,needle", [
    (["train", "missing.yaml"], "does not exist"),
    (["train", "{cfg}", "--set", "train.lr=-1"], "train.lr"),
    (["train", "{cfg}", "--set", "train.bogus=1"], "train.bogus"),
    (["train", "{cfg}", "--set", "prompt.template=Review: {{text} {mask}"], "template column"),
    (["train", "{cfg}", "--set", "prompt.template={text} no mask here"], "no {mask}"),
    (["train", "{cfg}", "--set", "prompt.template={review} {mask}"], "not a column"),
    (["train", "{cfg}", "--set", "prompt.verbalizer={negative: bad, neutral: meh}"], "not in the verbalizer"),
    (["train", "{cfg}", "--set", "prompt.verbalizer={negative: bad}"], "has one label"),
    (["train", "{cfg}", "--set", "method.name=magic"], "unknown method"),
    (["eval", "{tmp}", "--data", "movie-reviews"], "not a prompttune artifact"),
    (["predict", "{tmp}", "x"], "not a prompttune artifact"),
])
def test_bad_input_exits_nonzero_with_a_one_paragraph_error(monkeypatch, capsys, workdir, args, needle):
    args = [a.replace("{cfg}", str(workdir / "run.yaml")).replace("{tmp}", str(workdir)) for a in args]
    code, out, err = run(monkeypatch, capsys, *args)
    assert code != 0
    assert needle in err, err
    assert "Traceback" not in err and "Fix:" in err


def test_bad_yaml_names_line_and_column(monkeypatch, capsys, tmp_path):
    (tmp_path / "bad.yaml").write_text("model:\n  name: [unclosed\n")
    code, _, err = run(monkeypatch, capsys, "train", tmp_path / "bad.yaml")
    assert code != 0 and "line 3" in err


def test_with_json_stdout_holds_only_the_json_even_when_a_library_prints_there(monkeypatch, capsys, workdir):
    """DeepSpeed's logger prints to stdout when it is imported (transformers imports it to save a trained backbone)."""
    import prompttune.artifact as artifact

    real_save = artifact.write_artifact

    def chatty_save(*args, **kw):
        print("[2026-11-29 03:09:09] [WARNING] [real_accelerator.py:213:get_accelerator] Setting accelerator to CPU.")
        return real_save(*args, **kw)

    monkeypatch.setattr(artifact, "write_artifact", chatty_save)
    code, out, err = run(monkeypatch, capsys, "train", workdir / "run.yaml", "--json")
    assert code == 0, err
    assert json.loads(out)["n"] == 20  # the whole of stdout is one JSON object
    assert "Setting accelerator to CPU" in err
    code, out, _ = run(monkeypatch, capsys, "train", workdir / "run.yaml", "--set", f"output={workdir / 'plain'}")
    assert code == 0 and "Setting accelerator to CPU" in out and "accuracy" in out  # without --json, stdout is left alone


@pytest.mark.parametrize("cmd", ["train", "eval", "predict", "demo", "list", "experiment"])
def test_every_command_has_help(monkeypatch, capsys, cmd):
    code, out, _ = run(monkeypatch, capsys, cmd, "--help")
    assert code == 0 and "--help" in out


def test_module_entry_point_runs():
    res = subprocess.run([sys.executable, "-m", "prompttune", "list"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "smollm2-135m" in res.stdout and "movie-reviews" in res.stdout and "soft-prompt" in res.stdout


@pytest.mark.parametrize("path", sorted(__import__("pathlib").Path(__file__).parent.parent.joinpath("examples").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_example_configs_are_valid(path):
    from prompttune.config import load_config
    from prompttune.template import Template
    from prompttune.verbalizer import Verbalizer

    cfg = load_config(path)
    Template(cfg.prompt.template)
    Verbalizer.from_spec(cfg.prompt.verbalizer)


@pytest.mark.parametrize("tuned,hint", [(0.80, False), (0.75, True)])
def test_demo_text_output_reports_both_accuracies_and_says_when_tuning_did_not_help(monkeypatch, capsys, tmp_path, tuned, hint):
    import prompttune.pipeline as pipeline

    fake = {"zero_shot_accuracy": 0.786, "tuned_accuracy": tuned, "test_size": 500, "trainable_parameters": 4608,
            "artifact_bytes": 19539, "seconds": 150.0,
            "predictions": [{"text": "Great.", "label": "positive", "probabilities": {"negative": 0.1, "positive": 0.9}}]}
    monkeypatch.setattr(pipeline, "run_demo", lambda *a, **k: fake)
    code, out, _ = run(monkeypatch, capsys, "demo", "--output", tmp_path)
    assert code == 0
    assert f"zero-shot accuracy 0.7860 -> tuned {tuned:.4f} on 500" in out and "positive (0.90)  Great." in out
    assert ("did not beat the hand-written one" in out) == hint
