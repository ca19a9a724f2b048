"""A validation suite as an experiment: a tasks axis, PEFT's own prompt tuning and LoRA as anchors, per-item predictions
and McNemar's paired test of one method against the others."""

from __future__ import annotations

import json

import pytest

from conftest import toy_rows, write_csv
from prompttune.errors import ConfigError
from prompttune.experiment import CELL_JSON, cell_fingerprint, expand, run_grid
from prompttune.metrics import mcnemar


@pytest.fixture
def suite_raw(tmp_path, saved_tiny):
    a = {"train": write_csv(tmp_path / "a-train.csv", toy_rows(40, seed=1)), "test": write_csv(tmp_path / "a-test.csv", toy_rows(20, seed=2))}
    b = {"train": write_csv(tmp_path / "b-train.csv", toy_rows(40, seed=3)), "test": write_csv(tmp_path / "b-test.csv", toy_rows(16, seed=4))}
    return {
        "model": {"name": saved_tiny("llama")},
        "prompt": {"template": "Review: {text} Sentiment: {mask}", "verbalizer": {"negative": "bad", "positive": "good"}},
        "data": {"train": a["train"], "test": a["test"]},
        "train": {"max_steps": 3, "eval_every": 3, "lr": 0.05, "progress": False},
        "output": str(tmp_path / "suite"),
        "grid": {"tasks": [{"label": "a", "data": a},
                           {"label": "b", "data": b, "prompt": {"template": "Text: {text} Label: {mask}"}}],
                 "methods": ["zero-shot", {"name": "soft-prompt", "num_tokens": 2}, {"name": "peft-lora", "steps": 2}],
                 "shots": [2], "seeds": [0, 1], "compare": "soft-prompt"},
    }


def test_mcnemar_exact_p_values():
    def pairs(b, c, both=5):  # b items only A gets right, c only B, `both` that both get right
        return [True] * b + [False] * c + [True] * both, [False] * b + [True] * c + [True] * both

    assert mcnemar(*pairs(3, 0)) == {"b": 3, "c": 0, "n": 8, "p": 0.25}  # 2 * (1/2)^3
    assert mcnemar(*pairs(6, 0))["p"] == pytest.approx(2 / 64)
    assert mcnemar(*pairs(10, 2))["p"] == pytest.approx(2 * (1 + 12 + 66) / 4096)  # 0.0386, statsmodels' exact value
    assert mcnemar(*pairs(2, 10))["p"] == mcnemar(*pairs(10, 2))["p"]  # two-sided
    assert mcnemar(*pairs(4, 4))["p"] == 1.0 and mcnemar(*pairs(0, 0))["p"] == 1.0
    with pytest.raises(ValueError, match="same items"):
        mcnemar([True], [True, False])


def test_tasks_axis_gives_each_task_its_own_cells_data_and_prompt(suite_raw):
    g = expand(suite_raw)
    model = g.models[0]
    assert g.tasks == ["a", "b"] and g.compare == "soft-prompt"
    assert len(g.cells) == 2 * (1 + 2 + 2)  # per task: zero-shot once, each trained method per seed
    keys = [c.key for c in g.cells]
    assert f"a/{model}/zero-shot/zero-shot" in keys and f"b/{model}/peft-lora/shots2/seed1" in keys
    b = next(c for c in g.cells if c.key == f"b/{model}/soft-prompt/shots2/seed0")
    assert b.config.prompt.template == "Text: {text} Label: {mask}" and b.config.data.train.endswith("b-train.csv")
    assert b.config.output.endswith(f"cells/b/{model}/soft-prompt/shots2-seed0")
    lora = next(c for c in g.cells if c.key == f"a/{model}/peft-lora/shots2/seed0")
    assert lora.anchor == {"name": "peft-lora", "options": {"lr": 1e-3, "batch_size": 8, "steps": 2, "r": 8, "lora_alpha": 32,
                                                            "lora_dropout": 0.1}}
    # an anchor's options are part of what a finished cell is checked against
    assert cell_fingerprint(lora.config, lora.anchor) != cell_fingerprint(lora.config, {**lora.anchor, "options": {}})


@pytest.mark.parametrize("change,message,where", [
    (lambda g: g.update(tasks=[{"label": "a", "dataa": {}}]), "a task entry has no key 'dataa'", "grid.tasks[0]"),
    (lambda g: g.update(tasks=["movie-reviews", "movie-reviews"]), "two tasks are labelled 'movie-reviews'", "grid.tasks[1]"),
    (lambda g: g.update(tasks=[{"data": {"test": "x.csv"}}]), "needs a `label`", "grid.tasks[0]"),
    (lambda g: g.update(tasks=[42]), "built-in data name or a mapping", "grid.tasks[0]"),
    (lambda g: g.update(tasks=[{"label": "a", "prompt": "Text: {text}"}]), "prompt in a task entry must be a mapping", "grid.tasks[0].prompt"),
    (lambda g: g.update(methods=[{"name": "peft-lora", "rank": 4}]), "peft-lora has no option 'rank'", "grid.methods[0]"),
    (lambda g: g.update(compare="prefix"), "grid.compare names 'prefix'", "grid.compare"),
])
def test_bad_suite_entries_are_refused_with_where_and_how(suite_raw, change, message, where):
    change(suite_raw["grid"])
    with pytest.raises(ConfigError) as e:
        expand(suite_raw, where="suite.yaml")
    assert message in e.value.what and where in e.value.where and e.value.fix


def test_an_anchor_refuses_a_template_with_soft_tokens(suite_raw):
    suite_raw["prompt"]["template"] = "{soft*2} Review: {text} Sentiment: {mask}"
    suite_raw["grid"]["methods"] = [{"name": "soft-prompt", "num_tokens": 2}, "peft-prompt-tuning"]
    suite_raw["grid"].pop("compare")
    with pytest.raises(ConfigError, match="PEFT anchor needs a template"):
        expand(suite_raw)


def _fake(correct_of):
    from prompttune.report import write_json

    def run(cell, root, **_):
        correct = correct_of(cell)
        rec = {"cell": cell.key, "task": cell.task, "model": cell.model, "method": cell.method, "shots": cell.shots, "seed": cell.seed,
               "accuracy": correct.count("1") / len(correct), "macro_f1": 0.5, "correct": correct, "n": len(correct),
               "config": cell_fingerprint(cell.config, cell.anchor)}
        write_json(cell.directory(root) / CELL_JSON, rec)
        return rec

    return run


def _correct_of(cell, n=40):
    # soft-prompt against zero-shot: 30 rows to 0 (seed 0), 28 to 10 (seed 1, p = 0.005): a win on both seeds;
    # against peft-lora: 2 rows to 0 on seed 0 (p = 0.5, a tie), 0 to 12 on seed 1 (p = 2/4096, a loss)
    if cell.method == "zero-shot":
        return "0" * 30 + "1" * (n - 30)
    if cell.method == "soft-prompt":
        return "1" * 28 + "0" * (n - 28) if cell.seed == 1 else "1" * n
    return "1" * n if cell.seed == 1 else "00" + "1" * (n - 2)


def test_paired_table_counts_wins_ties_and_losses_per_seed(suite_raw):
    correct_of = _correct_of
    g = expand(suite_raw)
    res = run_grid(g, progress=False, log=lambda m: None, runner=_fake(correct_of))
    model = g.models[0]
    t = {(x["task"], x["method"]): x for x in res["tally"]}
    assert (t["a", "zero-shot"]["wins"], t["a", "zero-shot"]["pairs"]) == (2, 2)
    lora = t["a", "peft-lora"]
    assert (lora["wins"], lora["ties"], lora["losses"]) == (0, 1, 1)
    p1 = next(p for p in res["paired"] if (p["task"], p["method"], p["seed"]) == ("a", "peft-lora", 1))
    assert (p1["b"], p1["c"], p1["p"]) == (0, 12, pytest.approx(2 / 4096))
    md = (g.output / "results.md").read_text()
    assert "| task | model | zero-shot | soft-prompt | peft-lora | soft-prompt vs zero-shot (W/T/L) | soft-prompt vs peft-lora (W/T/L) |" in md
    assert f"| a | {model} | 0.250 | 0.850 ± 0.150 (2) | 0.975 ± 0.025 (2) | 2/0/0 | 0/1/1 |" in md
    assert "## b / " + model in md and "McNemar" in md
    assert "| zero-shot | 0 | — | 2 |" in md and "| peft-lora | 0 | — | 4 |" in md  # efficiency: the fakes record none


def test_seeds_run_in_pieces_merge_into_the_table_of_one_run(suite_raw, tmp_path):
    suite_raw["grid"]["seeds"] = [0, 1, 2]
    whole = expand(suite_raw)
    run_grid(whole, progress=False, log=lambda m: None, runner=_fake(_correct_of))
    suite_raw["grid"]["seeds"] = [0]
    suite_raw["output"] = str(tmp_path / "seed0")
    first = run_grid(expand(suite_raw), progress=False, log=lambda m: None, runner=_fake(_correct_of))
    assert {r["seed"] for r in first["runs"]} == {0}
    for seed, earlier in ((1, "seed0"), (2, "seed1")):  # a chain: the piece of seed 2 merges the merged table of 0-1
        suite_raw["grid"].update(seeds=[seed], merge=[str(tmp_path / earlier)])
        suite_raw["output"] = str(tmp_path / f"seed{seed}")
        g = expand(suite_raw)
        ran = []
        res = run_grid(g, progress=False, log=lambda m: None, runner=lambda c, r, **k: ran.append(c.key) or _fake(_correct_of)(c, r))
        assert all(f"seed{seed}" in k or "zero-shot" in k for k in ran)  # the merged seeds are not run again
    assert res["merged"] == [str(tmp_path / "seed1" / "results.json")]
    md = (g.output / "results.md").read_text().split("\n")
    assert md[4] == f"With the runs of earlier experiments of this suite (grid.merge): {tmp_path / 'seed1' / 'results.json'} (seeds 0, 1)."
    assert md[1:4] + md[6:] == (whole.output / "results.md").read_text().split("\n")[1:]
    # soft-prompt 1.0, 0.7, 1.0 (seeds 0-2); peft-lora 0.95, 1.0, 0.95; vs zero-shot 3 wins; vs lora tie, loss, tie
    assert "| a | " + g.models[0] + " | 0.250 | 0.900 ± 0.141 (3) | 0.967 ± 0.024 (3) | 3/0/0 | 0/2/1 |" in md


@pytest.mark.parametrize("change,message", [
    (lambda g, d: g.update(seeds=[0, 1]), "which this grid runs too"),
    (lambda g, d: g.update(compare="peft-lora"), "not of grid.compare ('peft-lora')"),
    (lambda g, d: g["methods"].__setitem__(2, {"name": "peft-lora", "label": "lora", "steps": 2}), "method 'peft-lora', which this grid lacks"),
    (lambda g, d: g.update(merge=[str(d / "nothing")]), "cannot be read"),
    (lambda g, d: g.update(merge=[str(d / "seed0"), str(d / "copy")]), "both have"),
    (lambda g, d: g.update(merge={"a": 1}), "must be a list of experiment directories"),
])
def test_a_merge_of_another_suite_or_the_same_seed_is_refused_before_anything_runs(suite_raw, tmp_path, change, message):
    suite_raw["grid"]["seeds"] = [0]
    suite_raw["output"] = str(tmp_path / "seed0")
    run_grid(expand(suite_raw), progress=False, log=lambda m: None, runner=_fake(_correct_of))
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "results.json").write_bytes((tmp_path / "seed0" / "results.json").read_bytes())
    suite_raw["grid"].update(seeds=[1], merge=[str(tmp_path / "seed0")])
    suite_raw["output"] = str(tmp_path / "seed1")
    change(suite_raw["grid"], tmp_path)
    with pytest.raises(ConfigError) as e:
        expand(suite_raw, where="suite.yaml")
    assert message in e.value.what and "grid.merge" in e.value.where and e.value.fix


def test_a_merge_scored_on_other_test_rows_is_refused_and_the_cells_run_are_kept(suite_raw, tmp_path):
    suite_raw["grid"]["seeds"] = [0]
    suite_raw["output"] = str(tmp_path / "seed0")
    run_grid(expand(suite_raw), progress=False, log=lambda m: None, runner=_fake(lambda c: _correct_of(c, 50)))
    suite_raw["grid"].update(seeds=[1], merge=[str(tmp_path / "seed0")])
    suite_raw["output"] = str(tmp_path / "seed1")
    g = expand(suite_raw)
    with pytest.raises(ConfigError, match="different numbers of test rows"):
        run_grid(g, progress=False, log=lambda m: None, runner=_fake(_correct_of))
    suite_raw["grid"]["merge"] = [str(tmp_path / "seed0")]
    suite_raw["output"] = str(tmp_path / "seed1-again")
    with pytest.raises(ConfigError, match="another config or another prompttune"):  # the same rows, another zero-shot score
        run_grid(expand(suite_raw), progress=False, log=lambda m: None,
                 runner=_fake(lambda c: "1" * 50 if c.method == "zero-shot" else _correct_of(c, 50)))
    suite_raw["output"] = str(tmp_path / "seed1")
    suite_raw["grid"].pop("merge")
    res = run_grid(expand(suite_raw), progress=False, log=lambda m: None, runner=lambda *a, **k: pytest.fail("ran again"))
    assert {r["seed"] for r in res["runs"] if r["shots"]} == {1}


def test_a_real_suite_records_predictions_and_both_peft_anchors_train_and_score(suite_raw):
    suite_raw["grid"]["tasks"] = suite_raw["grid"]["tasks"][:1]
    suite_raw["grid"]["seeds"] = [0]
    suite_raw["grid"]["methods"] = ["zero-shot", {"name": "soft-prompt", "num_tokens": 2},
                                    {"name": "peft-prompt-tuning", "num_virtual_tokens": 3, "steps": 20, "batch_size": 4, "lr": 0.3},
                                    {"name": "peft-lora", "steps": 20, "batch_size": 4, "lr": 2e-2}]
    g = expand(suite_raw)
    res = run_grid(g, progress=False, log=lambda m: None)
    assert res["cells"] == 4
    hidden = None
    for c in g.cells:
        d = c.directory(g.output)
        rec = json.loads((d / CELL_JSON).read_text())
        preds = [json.loads(line) for line in (d / "predictions.jsonl").read_text().splitlines()]
        assert len(preds) == rec["n"] == 20 and [p["index"] for p in preds] == list(range(20))
        assert rec["correct"] == "".join("1" if p["gold"] == p["predicted"] else "0" for p in preds)
        assert rec["accuracy"] == pytest.approx(rec["correct"].count("1") / 20)
        if c.anchor:
            m = json.loads((d / "metrics.json").read_text())
            losses = m["training"]["losses"]
            assert m["anchor"] == c.anchor["name"] and len(losses) == m["training"]["steps"] == 20
            # it learns: the mean loss of the first 3 steps minus that of the last 3 was 2.0-4.6 (prompt tuning) and
            # 4.7-5.8 (LoRA) over seeds 0-4 of this toy task
            assert sum(losses[:3]) / 3 - sum(losses[-3:]) / 3 > 1.0
            if c.anchor["name"] == "peft-prompt-tuning":
                hidden = rec["trainable_parameters"] / 3
            else:
                assert rec["trainable_parameters"] > 0
    assert hidden is not None and hidden == int(hidden)  # 3 virtual tokens x the hidden size
    assert len(res["paired"]) == 3 and {p["method"] for p in res["paired"]} == {"zero-shot", "peft-prompt-tuning", "peft-lora"}
    md = (g.output / "results.md").read_text()
    assert f"| peft-prompt-tuning | {3 * int(hidden):,} |" in md and "| zero-shot | 0 |" in md


def test_the_shipped_suite_is_valid():
    from pathlib import Path

    from prompttune.experiment import read_grid

    g = read_grid(Path(__file__).parent.parent / "examples" / "grids" / "suite.yaml")
    assert g.tasks == ["movie-reviews", "product-reviews", "editorials", "social-posts", "bbc-news", "chinese-reviews"]
    assert g.methods == ["zero-shot", "prefix", "peft-prompt-tuning", "peft-lora"] and g.compare == "prefix"
    assert len(g.cells) == 6 * (1 + 3 * 5)
    topics = next(c for c in g.cells if c.task == "bbc-news" and c.method == "peft-lora")
    assert topics.config.prompt.template.startswith("Headline: {headline}") and len(topics.config.prompt.verbalizer) == 5


@pytest.mark.parametrize("kind", ["prompt-tuning", "lora"])
def test_the_anchors_label_loss_equals_the_models_own_loss_and_gradients(saved_tiny, kind):
    import torch
    from peft import LoraConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from prompttune.experiment.anchors import label_loss

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(saved_tiny("llama"))
    cfg = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4) if kind == "prompt-tuning" else \
        LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False)
    model = get_peft_model(base, cfg)
    ids = torch.randint(5, 90, (3, 9))
    att = torch.ones_like(ids)
    att[1, 7:] = 0  # right padding
    lab = torch.full_like(ids, -100)
    lab[0, 6:9], lab[1, 5:7], lab[2, 8] = ids[0, 6:9], ids[1, 5:7], ids[2, 8]  # label words of 3, 2 and 1 tokens
    params = [p for p in model.parameters() if p.requires_grad]
    ours = label_loss(model, ids, att, lab, virtual=4 if kind == "prompt-tuning" else 0)
    g_ours = torch.autograd.grad(ours, params)
    theirs = model(input_ids=ids, attention_mask=att, labels=lab).loss
    g_theirs = torch.autograd.grad(theirs, params)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g_ours, g_theirs))


def test_a_damaged_results_json_in_grid_merge_is_a_clear_error_never_a_crash(suite_raw, tmp_path):
    # fuzz: results.json of a finished run with one value replaced, dropped or the text cut short
    import random

    suite_raw["grid"]["seeds"] = [0]
    suite_raw["output"] = str(tmp_path / "seed0")
    run_grid(expand(suite_raw), progress=False, log=lambda m: None, runner=_fake(_correct_of))
    good = json.loads((tmp_path / "seed0" / "results.json").read_text())
    suite_raw["grid"].update(seeds=[1], merge=[str(tmp_path / "bad")])
    suite_raw["output"] = str(tmp_path / "seed1")  # its cells run once, then each trial only merges and writes the table
    (tmp_path / "bad").mkdir()
    rng = random.Random(0)
    junk = [None, True, -1, 1.5, float("nan"), "x", [], {}, [1], {"a": 1}, 10**20]
    refused = 0
    for trial in range(150):
        data = json.loads(json.dumps(good))
        part = rng.choice(["runs", "paired"])
        item = rng.choice(data[part])
        key = rng.choice(sorted(item))
        if trial % 5 == 0:
            del item[key]
        else:
            item[key] = rng.choice(junk)
        text = json.dumps(data)
        if trial % 7 == 0:
            text = text[: rng.randrange(len(text))]
        (tmp_path / "bad" / "results.json").write_text(text)
        try:
            run_grid(expand(suite_raw), progress=False, log=lambda m: None, runner=_fake(_correct_of))
        except ConfigError as e:
            assert e.where.startswith("grid") and "merge" in e.where and e.fix
            refused += 1
    assert refused > 75  # most damage is caught; the rest is in keys the table does not read (cell, b, c, ...)
