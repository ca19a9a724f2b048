"""`prompttune config` (every key, from the models), `--defaults` (a complete commented config), `--schema` (JSON Schema
for editors) and `train --dry-run` (every check, the plan, nothing trained or written)."""

from __future__ import annotations

import glob
import json
import subprocess
import sys
import typing

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from conftest import cli_ok, run_cli, toy_rows, write_csv
from prompttune.config import MethodConfig, RunConfig, load_config
from prompttune.schemas import DEFAULT_METHOD, METHOD_OPTIONS


def leaf_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every key a config can set, walked from the models independently of prompttune.config_docs."""
    out = set()
    for name, field in model.model_fields.items():
        kinds = [a for a in (typing.get_args(field.annotation) or (field.annotation,)) if a is not type(None)]
        sections = [a for a in kinds if isinstance(a, type) and issubclass(a, BaseModel) and a.__name__ != "DatasetSpec"]
        if field.annotation is MethodConfig:
            out.add(prefix + name + ".name")
        elif sections:
            out |= leaf_paths(sections[0], f"{prefix}{name}.")
        else:
            out.add(prefix + name)
    return out


def listed(text: str) -> set[str]:
    return {line.split(":")[0] for line in text.splitlines() if line and not line.startswith(" ") and ": " in line
            and not line.startswith("each method")}


def test_config_lists_every_key_of_the_run_config(monkeypatch, capsys):
    out = cli_ok(monkeypatch, capsys, "config")
    assert listed(out) == leaf_paths(RunConfig)
    assert 'train.lr: float | None = null\n    learning rate' in out
    assert 'data.shots_per_class: int | None = 16\n' in out
    assert "prompttune config --method NAME" in out and all(m in out for m in METHOD_OPTIONS)


@pytest.mark.parametrize("method", list(METHOD_OPTIONS))
def test_config_method_lists_that_methods_own_options(method, monkeypatch, capsys):
    out = cli_ok(monkeypatch, capsys, "config", "--method", method)
    own = {f"method.{k}" for k in METHOD_OPTIONS[method].model_fields}
    assert listed(out) == leaf_paths(RunConfig) | own
    for k, f in METHOD_OPTIONS[method].model_fields.items():
        assert f"method.{k}: " in out and (f.description or "") in out


def test_an_unknown_method_is_refused_with_the_list(monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "config", "--method", "magic")
    assert code != 0 and "unknown method 'magic'" in err and "soft-prompt" in err


@pytest.mark.parametrize("method", [None, *METHOD_OPTIONS])
def test_defaults_write_a_config_that_loads_back_to_the_defaults(method, tmp_path, monkeypatch, capsys):
    text = cli_ok(monkeypatch, capsys, "config", "--defaults", *(["--method", method] if method else []))
    (tmp_path / "my.yaml").write_text(text)
    got = load_config(tmp_path / "my.yaml")
    want = RunConfig(method={"name": method or DEFAULT_METHOD,
                             **(METHOD_OPTIONS[method]().model_dump() if method else {})})
    assert got.model_dump() == want.model_dump()
    body = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert all("  # " in ln or ln.endswith(":") for ln in body if ":" in ln and not ln.endswith(":"))  # every key explained
    assert "yaml-language-server: $schema=" in text


@pytest.fixture(scope="module")
def validator():
    import prompttune.config_docs as docs

    schema = docs.json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", sorted(glob.glob("examples/*.yaml") + glob.glob("examples/grids/*.yaml")))
def test_the_schema_accepts_every_shipped_example(path, validator):
    raw = yaml.safe_load(open(path, encoding="utf-8"))
    raw.pop("grid", None)  # a grid file is a train config plus its grid
    assert [e.message for e in validator.iter_errors(raw)] == []


@pytest.mark.parametrize("raw", [{"train": {"lr": "fast"}}, {"bogus": 1}, {"train": {"bogus": 1}},
                                 {"method": {"name": "prefix", "num_tokens": "many"}},
                                 {"method": {"name": "lora", "num_tokens": 4}}, {"method": {"rank": 4}},
                                 {"method": {"name": "magic"}}, {"data": {"train": {"hub": "a/b", "spilt": "x"}}},
                                 {"train": {"metric": "f1"}}])
def test_the_schema_refuses_what_the_config_refuses(raw, validator):
    assert list(validator.iter_errors(raw))
    with pytest.raises(Exception):
        RunConfig.model_validate(raw)


def test_the_schema_command_writes_valid_json_and_loads_no_torch():
    code = ("import sys, json; from prompttune.cli import main; sys.argv=['prompttune','config','--schema']\n"
            "import io, contextlib\nbuf=io.StringIO()\nwith contextlib.redirect_stdout(buf):\n"
            "    try: main()\n    except SystemExit: pass\n"
            "json.loads(buf.getvalue()); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_errors_point_to_the_command_that_lists_the_keys(tmp_path, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "train", "--set", "train.bogus=1", "--dry-run")
    assert code != 0 and "`prompttune config`" in err
    code, out, err = run_cli(monkeypatch, capsys, "train", "--set", "method.name=lora", "--set", "method.rank=4", "--dry-run")
    assert code != 0 and "`prompttune config --method lora`" in err


@pytest.fixture
def dry(tmp_path, saved_tiny):
    write_csv(tmp_path / "train.csv", toy_rows(40, seed=1))
    write_csv(tmp_path / "test.csv", toy_rows(12, seed=2))
    cfg = {"model": {"name": saved_tiny("llama")},
           "prompt": {"template": "Review: {text} Sentiment: {mask}", "verbalizer": {"negative": "bad", "positive": "good"}},
           "method": {"name": "soft-prompt", "num_tokens": 4},
           "data": {"train": str(tmp_path / "train.csv"), "test": str(tmp_path / "test.csv"), "shots_per_class": 8},
           "output": str(tmp_path / "out")}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


def test_dry_run_prints_the_plan_and_writes_nothing(dry, monkeypatch, capsys):
    plan = json.loads(cli_ok(monkeypatch, capsys, "train", dry / "run.yaml", "--dry-run", "--json"))
    assert plan["rows"] == {"train": 16, "dev": 16, "test": 12}
    assert plan["labels"] == {"negative": 8, "positive": 8}
    assert plan["trainable_parameters"] == 4 * 32 and plan["method"] == "soft-prompt"
    assert plan["steps"] == 60 and plan["batch_size"] == 8 and plan["steps_per_epoch"] == 2  # steps_for(16, 8)
    assert set(plan["label_words"]) == {"negative", "positive"} and all(plan["label_words"].values())
    assert not (dry / "out").exists() and not list(dry.glob(".out*"))
    text = cli_ok(monkeypatch, capsys, "train", dry / "run.yaml", "--dry-run")
    assert "16 train, 16 dev, 12 test rows" in text and "60 steps of 8" in text and "128 trainable parameters" in text
    assert plan["refit"] is True  # refit: auto, and 16 train rows are few-shot
    assert "refit     then again from the initial prompt on train + dev (32 rows)" in text
    text = cli_ok(monkeypatch, capsys, "train", dry / "run.yaml", "--dry-run", "--set", "train.refit=false")
    assert "refit" not in text


def test_dry_run_catches_a_bad_test_file_before_training(dry, monkeypatch, capsys):
    (dry / "test.csv").write_text("text,label\nfine film,positive\ndull,neutral\n")
    code, out, err = run_cli(monkeypatch, capsys, "train", dry / "run.yaml", "--dry-run")
    assert code != 0 and "neutral" in err and "data.test" in err
    (dry / "test.csv").write_text("review,label\nfine film,positive\n")
    code, out, err = run_cli(monkeypatch, capsys, "train", dry / "run.yaml", "--dry-run")
    assert code != 0 and "'text'" in err
    assert not (dry / "out").exists()


def test_dry_run_of_a_generation_config(tmp_path, monkeypatch, capsys, saved_tiny):
    from conftest import write_jsonl

    rows = [{"src": f"the film {i}", "tgt": f"good {i}"} for i in range(20)]
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg = {"model": {"name": saved_tiny("llama")}, "prompt": {"template": "Text: {src} Summary:", "target": "tgt"},
           "method": {"name": "prefix", "num_tokens": 2},
           "data": {"train": str(tmp_path / "pairs.jsonl"), "test": str(tmp_path / "pairs.jsonl"), "dev_size": 4},
           "output": str(tmp_path / "out")}
    (tmp_path / "gen.yaml").write_text(yaml.safe_dump(cfg))
    plan = json.loads(cli_ok(monkeypatch, capsys, "train", tmp_path / "gen.yaml", "--dry-run", "--json"))
    assert plan["task"] == "generation" and plan["target"] == "tgt"
    assert plan["rows"] == {"train": 16, "dev": 4, "test": 20} and plan["trainable_parameters"] > 0
