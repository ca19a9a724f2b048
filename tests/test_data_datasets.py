"""Data from the Hugging Face ``datasets`` world: Parquet / Arrow files, save_to_disk directories, Hub ids (offline here)
and in-memory Dataset / DatasetDict objects; ClassLabel names; rows made only when read; dev never repeats train."""

from __future__ import annotations

import json
import random

import datasets
import pytest
import yaml

from conftest import run_cli, tiny_backbone, toy_rows
from prompttune import data as D
from prompttune.errors import DataError, PromptTuneError

VERB = {"negative": "bad", "positive": "good"}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """datasets converts Parquet into Arrow files in its cache: keep them in the test's directory."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def class_label_dataset(rows, *, text_column="text"):
    """Rows with a ClassLabel label (0 = negative, 1 = positive), as SST-2 on the Hub has it."""
    features = datasets.Features({text_column: datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    return datasets.Dataset.from_dict({text_column: [r["text"] for r in rows],
                                       "label": [["negative", "positive"].index(r["label"]) for r in rows]}, features=features)


def test_parquet_arrow_and_saved_directories_give_the_same_rows_as_the_dataset(tmp_path):
    rows = toy_rows(30, seed=4)
    ds = class_label_dataset(rows)
    ds.to_parquet(str(tmp_path / "r.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    datasets.DatasetDict({"train": ds, "validation": ds.select(range(6)), "test": ds.select(range(10, 14))}).save_to_disk(
        str(tmp_path / "dict"))
    want = [{"text": r["text"], "label": r["label"]} for r in rows]
    for spec in (tmp_path / "r.parquet", str(arrow), tmp_path / "saved", tmp_path / "dict"):
        assert D.load_rows(spec) == want, spec  # ClassLabel ints come back as their names, for the verbalizer
    assert D.load_rows(tmp_path / "dict", split="dev") == want[:6]  # dev reads the validation split
    assert D.load_rows(tmp_path / "dict", split="test") == want[10:14]
    assert D.load_rows(f"{tmp_path / 'dict'}@validation", split="test") == want[:6]  # an explicit split wins
    assert D.load_rows({"path": str(tmp_path / "dict"), "split": "test"}) == want[10:14]


def test_columns_map_and_values_become_text_as_in_json_files(tmp_path):
    ds = datasets.Dataset.from_dict({"review": ["fine film", "awful plot"], "stars": [4.5, 1.0], "sentiment": [1, 0],
                                     "tags": [["a", "b"], []]})
    ds.to_parquet(str(tmp_path / "x.parquet"))
    rows = D.load_rows(tmp_path / "x.parquet", columns={"text": "review"}, label_column="sentiment")
    assert rows == [{"text": "fine film", "stars": "4.5", "tags": '["a", "b"]', "label": "1"},
                    {"text": "awful plot", "stars": "1.0", "tags": "[]", "label": "0"}]
    with pytest.raises(DataError, match="no column 'body'.*'review'"):
        D.load_rows(tmp_path / "x.parquet", columns={"text": "body"}, label_column="sentiment")
    with pytest.raises(DataError, match="no label column 'label'"):
        D.load_rows(tmp_path / "x.parquet")


def test_an_unlabelled_class_label_row_is_a_missing_label(tmp_path):
    ds = class_label_dataset(toy_rows(4)).cast_column("label", datasets.Value("int64"))
    ds = ds.map(lambda r, i: {"label": -1 if i == 2 else r["label"]}, with_indices=True)
    ds = ds.cast_column("label", datasets.ClassLabel(names=["negative", "positive"]))
    ds_path = tmp_path / "u.parquet"
    ds.to_parquet(str(ds_path))
    with pytest.raises(DataError, match="is missing") as e:
        D.load_rows(ds_path)
    assert e.value.where.endswith("row 3")
    want = ["positive", "negative", None, "negative"]
    assert [r.get("label") for r in D.load_rows(ds_path, require_label=False)] == want
    assert D.open_rows(ds_path, require_label=False).labels() == want  # the sampler's column-only read agrees


def test_split_errors_name_the_splits_there_are(tmp_path):
    ds = class_label_dataset(toy_rows(6))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(DataError, match=r"no test split.*\['train'\]") as e:
        D.load_rows(tmp_path / "d", split="test")
    assert "@train" in e.value.fix
    with pytest.raises(DataError, match=r"no split 'dev'; the splits are \['train'\]"):
        D.load_rows(f"{tmp_path / 'd'}@dev")
    ds.to_parquet(str(tmp_path / "one.parquet"))
    with pytest.raises(DataError, match="has no splits"):
        D.load_rows(f"{tmp_path / 'one.parquet'}@test")


@pytest.mark.parametrize("spec", ["hf:stanfordnlp/sst2", "hf:nyu-mll/glue:sst2@validation",
                                  {"hub": "stanfordnlp/sst2", "split": "train"}])
def test_a_hub_dataset_offline_fails_with_the_fix(spec, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 / HF_DATASETS_OFFLINE=1 set
    with pytest.raises(DataError) as e:
        D.load_rows(spec)
    assert "could not reach the Hugging Face Hub" in str(e.value) and "sst2" in str(e.value)
    assert "save_to_disk" in e.value.fix and "HF_HUB_OFFLINE" in e.value.fix


@pytest.mark.parametrize("spec,match", [("hf:", "not a Hub dataset id"), ("hf:../etc", "not a Hub dataset id"),
                                        ("hf:a/b@x@y", "hf:OWNER/NAME"), ({"hub": "a/b", "path": "x"}, "exactly one"),
                                        ({"path": "x", "revision": "main"}, "Hub datasets only"),
                                        ({"hub": "a/b", "spilt": "train"}, "unknown key"), ({"hub": 3}, "must be a string")])
def test_bad_dataset_specs_say_how_to_write_them(spec, match):
    with pytest.raises(DataError, match=match):
        D.load_rows(spec)


def test_a_corrupt_or_random_dataset_file_is_a_data_error(tmp_path):
    rng = random.Random(0)
    for i in range(12):  # fuzz: random bytes, and a real Parquet file cut short anywhere
        good = tmp_path / f"good{i}.parquet"
        class_label_dataset(toy_rows(8, seed=i)).to_parquet(str(good))
        blob = good.read_bytes()
        for name, content in ((f"cut{i}.parquet", blob[: rng.randrange(len(blob))]),
                              (f"junk{i}.arrow", rng.randbytes(rng.randrange(1, 400)))):
            (tmp_path / name).write_bytes(content)
            with pytest.raises(DataError) as e:
                D.load_rows(tmp_path / name)
            assert str(tmp_path / name) in e.value.where


def test_sampling_a_large_dataset_reads_only_the_rows_drawn(tmp_path, monkeypatch):
    n = 20_000
    ds = datasets.Dataset.from_dict({"text": [f"review number {i}" for i in range(n)],
                                     "label": ["positive" if i % 3 else "negative" for i in range(n)]})
    ds.to_parquet(str(tmp_path / "big.parquet"))
    made = []
    real = D.DatasetRows._row
    monkeypatch.setattr(D.DatasetRows, "_row", lambda self, raw, i: made.append(i) or real(self, raw, i))
    from prompttune.config import RunConfig
    from prompttune.tasks.classification import ClassificationTask

    cfg = RunConfig.model_validate({"data": {"train": str(tmp_path / "big.parquet"), "test": str(tmp_path / "big.parquet"),
                                             "shots_per_class": 16, "test_size": 10}})
    train, dev, test = ClassificationTask.load_splits(cfg)
    assert len(train) == len(dev) == 32 and len(test) == 10
    assert len(made) == 32 + 32 + 10  # not 20,000: the label column alone is read to draw the sample
    assert {r["label"] for r in train} == {"negative", "positive"}


def test_the_dev_sample_never_repeats_a_training_row():
    pool = toy_rows(60, seed=3)
    for i, r in enumerate(pool):
        r["text"] += f" #{i}"
    labels = D.row_labels(pool)
    for seed in range(10):
        train = D.few_shot_indices(labels, 12, seed)
        dev = D.few_shot_indices(labels, 12, seed + 1, exclude=frozenset(train), strict=False)
        assert not set(train) & set(dev)
        assert len(dev) == 2 * 12  # 30 per class, 12 taken: 18 left, enough for 12
        assert D.few_shot_indices(labels, 12, seed) == train  # deterministic
    # where the two samples do not meet, excluding changes nothing (so existing runs keep their dev sets)
    big = D.row_labels(toy_rows(4000, seed=1))
    train = D.few_shot_indices(big, 16, 0)
    assert D.few_shot_indices(big, 16, 1, exclude=frozenset(train)) == D.few_shot_indices(big, 16, 1)


def test_a_config_with_a_parquet_train_file_trains(tmp_path, monkeypatch, capsys, saved_tiny):
    class_label_dataset(toy_rows(40, seed=1), text_column="review").to_parquet(str(tmp_path / "train.parquet"))
    datasets.DatasetDict({"test": class_label_dataset(toy_rows(12, seed=2), text_column="review")}).save_to_disk(
        str(tmp_path / "test-dir"))
    cfg = {"model": {"name": saved_tiny("llama")},
           "prompt": {"template": "Review: {text} Sentiment: {mask}", "verbalizer": VERB},
           "method": {"name": "soft-prompt", "num_tokens": 4},
           "data": {"train": str(tmp_path / "train.parquet"), "test": {"path": str(tmp_path / "test-dir")},
                    "columns": {"text": "review"}, "shots_per_class": 8},
           "train": {"max_steps": 2, "progress": False}, "output": str(tmp_path / "out")}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    code, out, err = run_cli(monkeypatch, capsys, "train", tmp_path / "run.yaml", "--json")
    assert code == 0, err
    assert json.loads(out)["n"] == 12
    code, out, err = run_cli(monkeypatch, capsys, "eval", tmp_path / "out", "--data", tmp_path / "train.parquet",
                             "--column", "text=review", "--json")
    assert code == 0, err
    assert json.loads(out)["n"] == 40
    datasets.Dataset.from_list([{"text": "the film was good"}, {"text": "bad plot"}]).to_parquet(str(tmp_path / "in.parquet"))
    code, out, err = run_cli(monkeypatch, capsys, "predict", tmp_path / "out", "--input", tmp_path / "in.parquet", "--json")
    assert code == 0, err
    answers = [json.loads(line) for line in out.splitlines()]
    assert [a["input"]["text"] for a in answers] == ["the film was good", "bad plot"]
    assert all(a["label"] in VERB and abs(sum(a["probabilities"].values()) - 1) < 1e-4 for a in answers)


def test_the_python_api_takes_datasets_and_dataset_dicts():
    from prompttune import PromptModel

    pm = PromptModel(tiny_backbone("llama"), "Review: {text} Sentiment: {mask}", VERB, method="soft-prompt",
                     method_options={"num_tokens": 4})
    splits = datasets.DatasetDict({"train": class_label_dataset(toy_rows(16, seed=1)),
                                   "validation": class_label_dataset(toy_rows(8, seed=2)),
                                   "test": class_label_dataset(toy_rows(10, seed=3))})
    pm.fit(splits, max_steps=2, progress=False, eval_every=1)
    by_dataset = pm.evaluate(splits["test"])
    by_dict = pm.evaluate(splits)  # a DatasetDict is evaluated on its test split
    by_rows = pm.evaluate(toy_rows(10, seed=3))
    assert by_dataset["n"] == by_dict["n"] == by_rows["n"] == 10
    assert by_dataset["predictions"] == by_rows["predictions"] == by_dict["predictions"]
    assert [p["label"] for p in pm.predict(splits["test"])] == [VERB_LABELS[i] for i in by_rows["predictions"]]


VERB_LABELS = list(VERB)


def test_a_missing_dataset_path_is_not_taken_for_a_corpus_name(tmp_path):
    with pytest.raises(PromptTuneError, match="neither an existing file nor a built-in corpus") as e:
        D.load_rows(tmp_path / "nope.parquet")
    assert "hf:OWNER/NAME" in e.value.fix


def test_a_run_on_a_hub_dataset_offline_stops_before_any_model_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    cfg = {"model": {"name": str(tmp_path / "no-such-model")}, "data": {"train": "hf:nyu-mll/glue:sst2", "test": None},
           "output": str(tmp_path / "out")}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    code, out, err = run_cli(monkeypatch, capsys, "train", tmp_path / "run.yaml")
    assert code != 0
    assert "could not reach the Hugging Face Hub for dataset 'nyu-mll/glue'" in err and "save_to_disk" in err
    assert "no-such-model" not in err and not (tmp_path / "out").exists()
