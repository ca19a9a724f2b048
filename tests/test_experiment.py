"""The experiment runner: grid expansion, resume, results table and plot, and clear errors for bad grids."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import cli_ok, run_cli, toy_rows, write_csv
from prompttune.errors import ConfigError
from prompttune.experiment import CELL_JSON, expand, read_grid, run_grid


@pytest.fixture
def grid_raw(tmp_path, saved_tiny):
    return {
        "model": {"name": saved_tiny("llama")},
        "prompt": {"template": "Review: {text} Sentiment: {mask}", "verbalizer": {"negative": "bad", "positive": "good"}},
        "data": {"train": write_csv(tmp_path / "train.csv", toy_rows(80, seed=1)), "test": write_csv(tmp_path / "test.csv", toy_rows(20, seed=2))},
        "train": {"max_steps": 3, "eval_every": 3, "lr": 0.05, "progress": False},
        "output": str(tmp_path / "exp"),
        "grid": {"methods": ["zero-shot", {"name": "soft-prompt", "num_tokens": 2},
                             {"name": "soft-prompt", "label": "soft-prompt-fast", "num_tokens": 2, "train": {"lr": 0.5}}],
                 "shots": [2, 4], "seeds": [0, 1]},
    }


def test_grid_expands_to_every_cell_with_its_own_config(grid_raw):
    g = expand(grid_raw)
    keys = [c.key for c in g.cells]
    assert len(keys) == 1 + 2 * 2 * 2 == len(set(keys))  # zero-shot once per model
    model = g.models[0]
    assert f"{model}/zero-shot/zero-shot" in keys and f"{model}/soft-prompt-fast/shots4/seed1" in keys
    c = next(c for c in g.cells if c.key == f"{model}/soft-prompt-fast/shots4/seed1")
    assert (c.config.data.shots_per_class, c.config.data.seed, c.config.train.seed) == (4, 1, 1)
    assert c.config.train.lr == 0.5 and c.config.method.options() == {"num_tokens": 2}
    assert c.config.output.endswith("cells/" + model + "/soft-prompt-fast/shots4-seed1")
    plain = next(c for c in g.cells if c.key == f"{model}/soft-prompt/shots2/seed0")
    assert plain.config.train.lr == 0.05 and not plain.config.zero_shot_baseline


def _fake_runner(calls):
    from prompttune.report import write_json

    def run(cell, root, **_):
        calls.append(cell.key)
        rec = {"cell": cell.key, "model": cell.model, "method": cell.method, "shots": cell.shots, "seed": cell.seed,
               "accuracy": 0.5 + cell.shots / 100 + cell.seed / 50, "macro_f1": 0.5, "config": None}
        from prompttune.experiment import cell_fingerprint

        rec["config"] = cell_fingerprint(cell.config)
        write_json(cell.directory(root) / CELL_JSON, rec)
        return rec

    return run


def test_mean_and_std_over_seeds_in_the_table(grid_raw):
    g = expand(grid_raw)
    res = run_grid(g, progress=False, log=lambda m: None, runner=_fake_runner([]))
    row = next(r for r in res["table"] if r["method"] == "soft-prompt" and r["shots"] == 4)
    assert row["runs"] == 2 and row["accuracy_mean"] == pytest.approx(0.55) and row["accuracy_std"] == pytest.approx(0.01)
    md = (g.output / "results.md").read_text()
    assert "| soft-prompt | 0.530 ± 0.010 (2) | 0.550 ± 0.010 (2) |" in md
    assert "| 2 per class | 4 per class |" in md


def test_real_grid_runs_every_cell_then_resume_skips_done_cells_and_reruns_half_done(grid_raw, tmp_path):
    grid_raw["grid"]["methods"] = ["zero-shot", {"name": "soft-prompt", "num_tokens": 2}]
    grid_raw["grid"]["shots"] = [2]
    g = expand(grid_raw)
    res = run_grid(g, progress=False, log=lambda m: None)
    assert res["cells"] == 3
    for c in g.cells:
        rec = json.loads((c.directory(g.output) / CELL_JSON).read_text())
        assert 0 <= rec["accuracy"] <= 1 and rec["n"] == 20
        assert (c.directory(g.output) / "prompt.json").exists()
    assert (g.output / "results.json").exists() and (g.output / "results.md").exists()
    assert (g.output / "accuracy_vs_shots.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = json.loads((g.output / "results.json").read_text())

    # interrupt: one cell lost its record (half done), another has a leftover temporary
    half = g.cells[-1]
    (half.directory(g.output) / CELL_JSON).unlink()
    calls: list[str] = []
    real = __import__("prompttune.experiment", fromlist=["run_cell"]).run_cell
    res2 = run_grid(g, progress=False, log=lambda m: None, runner=lambda c, r, **k: (calls.append(c.key), real(c, r, **k))[1])
    assert calls == [half.key]
    again = json.loads((g.output / "results.json").read_text())
    # the rerun cell gives the same result: same sample, same seed
    assert [r["accuracy"] for r in again["runs"]] == [r["accuracy"] for r in first["runs"]]
    assert res2["cells"] == 3


def test_an_interrupted_experiment_resumes_with_the_cells_not_done(grid_raw):
    g = expand(grid_raw)
    calls: list[str] = []
    fake = _fake_runner(calls)

    def interrupted(cell, root, **kw):
        if len(calls) == 3:
            raise KeyboardInterrupt
        return fake(cell, root, **kw)

    with pytest.raises(KeyboardInterrupt):
        run_grid(g, progress=False, log=lambda m: None, runner=interrupted)
    assert not (g.output / "results.json").exists()
    done = list(calls)
    calls.clear()
    res = run_grid(expand(grid_raw), progress=False, log=lambda m: None, runner=fake)
    assert calls == [c.key for c in g.cells][3:] and not set(done) & set(calls)
    assert res["cells"] == len(g.cells) == 9


def test_a_changed_cell_config_is_not_taken_as_done(grid_raw):
    calls: list[str] = []
    run_grid(expand(grid_raw), progress=False, log=lambda m: None, runner=_fake_runner(calls))
    n = len(calls)
    calls.clear()
    run_grid(expand(grid_raw), progress=False, log=lambda m: None, runner=_fake_runner(calls))
    assert calls == []
    grid_raw["train"]["lr"] = 0.01  # changes every cell except the one with its own lr and zero-shot
    run_grid(expand(grid_raw), progress=False, log=lambda m: None, runner=_fake_runner(calls))
    assert len(calls) == 4 and all("/soft-prompt/" in k for k in calls) and n == 9


def test_a_moved_experiment_keeps_its_done_cells(grid_raw, tmp_path):
    import shutil

    calls: list[str] = []
    run_grid(expand(grid_raw), progress=False, log=lambda m: None, runner=_fake_runner(calls))
    assert len(calls) == 9
    shutil.move(grid_raw["output"], tmp_path / "moved")
    grid_raw["output"] = str(tmp_path / "moved")
    calls.clear()
    res = run_grid(expand(grid_raw), progress=False, log=lambda m: None, runner=_fake_runner(calls))
    assert calls == [] and res["cells"] == 9  # the cells' records name the old place; what they computed is the same
    grid_raw["train"]["lr"] = 0.01  # a changed config is still a changed config after the move
    run_grid(expand(grid_raw), progress=False, log=lambda m: None, runner=_fake_runner(calls))
    assert len(calls) == 4


@pytest.mark.parametrize("edit,needle", [
    (lambda g: g["grid"].update(sizes=[1]), "unknown grid axis 'sizes'"),
    (lambda g: g["grid"].update(shots=[]), "grid.shots is empty"),
    (lambda g: g["grid"].update(seeds=None), "grid.seeds is empty"),
    (lambda g: g["grid"].pop("methods"), "grid.methods is missing"),
    (lambda g: g.pop("grid"), "no `grid` section"),
    (lambda g: g["grid"].update(shots=[8, 0]), "grid.shots must hold whole numbers >= 1"),
    (lambda g: g["grid"].update(methods=["soft-prompt", "magic"]), "unknown method 'magic'"),
    (lambda g: g["grid"].update(methods=["soft-prompt", "soft-prompt"]), "labelled 'soft-prompt'"),
    (lambda g: g["grid"].update(methods=[{"name": "soft-prompt", "train": {"bogus": 1}}]), "train.bogus"),
    (lambda g: g["train"].update(lr=-1), "train.lr"),
    (lambda g: g["grid"].update(methods=[{"name": "soft-prompt", "num_tokns": 4}]), "num_tokns"),
    (lambda g: g["grid"].update(keep_backbones="no"), "keep_backbones must be true or false"),
    (lambda g: g["prompt"].update(template="{soft*2} {text} {mask}"), "zero-shot cannot score"),
])
def test_bad_grids_fail_before_anything_runs(grid_raw, edit, needle):
    edit(grid_raw)
    with pytest.raises(ConfigError) as e:
        expand(grid_raw)
    assert needle in str(e.value) and e.value.fix


def test_cli_experiment_dry_run_and_run(grid_raw, tmp_path, monkeypatch, capsys):
    grid_raw["grid"] = {"methods": ["zero-shot"], "shots": [2], "seeds": [0]}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(grid_raw))

    def cli(*args):
        return cli_ok(monkeypatch, capsys, *args)

    assert cli("experiment", tmp_path / "g.yaml", "--dry-run").startswith("todo  ")
    res = json.loads(cli("experiment", tmp_path / "g.yaml", "--json"))
    assert res["cells"] == 1 and res["table"][0]["method"] == "zero-shot"
    assert cli("experiment", tmp_path / "g.yaml", "--dry-run").startswith("done  ")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**grid_raw, "grid": {"methods": [], "shots": [1], "seeds": [0]}}))
    code, _, err = run_cli(monkeypatch, capsys, "experiment", tmp_path / "bad.yaml")
    assert code == 2 and "grid.methods is empty" in err


def test_example_grid_is_valid():
    from pathlib import Path

    g = read_grid(Path(__file__).parent.parent / "examples" / "grids" / "sentiment.yaml")
    assert g.methods == ["zero-shot", "soft-prompt", "prompt-finetune"] and len(g.cells) == 1 + 2 * 3 * 5


def test_two_models_get_their_own_cells_rows_and_panels(grid_raw, saved_tiny):
    grid_raw["grid"]["models"] = [grid_raw["model"]["name"], {"name": saved_tiny("gpt2"), "label": "gpt2", "family": "causal-lm"}]
    g = expand(grid_raw)
    assert g.models == [g.models[0], "gpt2"] and len(g.cells) == 2 * 9
    c = next(c for c in g.cells if c.model == "gpt2")
    assert c.config.model.name == saved_tiny("gpt2") and c.config.model.family == "causal-lm"
    run_grid(g, progress=False, log=lambda m: None, runner=_fake_runner([]))
    md = (g.output / "results.md").read_text()
    assert md.count("| soft-prompt-fast |") == 2 and "## gpt2" in md
    from matplotlib.image import imread

    img = imread(str(g.output / "accuracy_vs_shots.png"))
    assert img.shape[1] > 1.8 * img.shape[0]  # one panel per model, side by side
