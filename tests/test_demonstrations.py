"""Demonstrations: k per class, never the query itself, within the length budget, saved with the artifact."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_backbone, toy_rows, write_jsonl
from prompttune.artifact import load
from prompttune.demonstrations import Demonstrations
from prompttune.errors import ConfigError
from prompttune.model import PromptModel

TEMPLATE = "Review: {text} Sentiment: {mask}"
WORDS = {"negative": "bad", "positive": "good"}


@pytest.fixture(scope="module")
def llama():
    return tiny_backbone("llama")


def _pm(bb, demos=None, **kw):
    return PromptModel(bb, TEMPLATE, WORDS, kw.pop("method", "zero-shot"), demonstrations=demos, **kw)


@pytest.mark.parametrize("select", ["random", "similar"])
def test_demonstrations_take_k_per_class_and_never_the_query(llama, select):
    pool = toy_rows(20, seed=1)
    pm = _pm(llama, Demonstrations(pool, {"k": 2, "select": select}))
    for row in pool:
        chosen = pm.demonstrations.choose(row)
        assert len(chosen) == 4
        assert sorted(r["label"] for r in chosen) == ["negative", "negative", "positive", "positive"]
        assert all(r["text"] != row["text"] for r in chosen)
        assert pm.demonstrations.choose(row) == chosen  # fixed per query: training and inference see the same


def test_the_query_is_excluded_even_when_it_is_the_only_example_of_its_class(llama):
    pool = [{"text": "good film", "label": "positive"}, {"text": "bad film", "label": "negative"},
            {"text": "awful plot", "label": "negative"}]
    pm = _pm(llama, Demonstrations(pool, {"k": 1}))
    chosen = pm.demonstrations.choose(pool[0])
    assert [r["label"] for r in chosen] == ["negative"]
    ids = pm.render(pool[0]).ids
    assert "good film" not in llama.tokenizer.decode(ids).split("Review:")[1]  # the demonstration part holds no copy


def test_similar_selection_prefers_word_overlap(llama):
    pool = [{"text": "the plot was awful awful", "label": "negative"}, {"text": "it was bad", "label": "negative"},
            {"text": "great great actor", "label": "positive"}, {"text": "nice movie", "label": "positive"}]
    pm = _pm(llama, Demonstrations(pool, {"k": 1, "select": "similar"}))
    chosen = pm.demonstrations.choose({"text": "an awful plot but a great actor"})
    assert {r["text"] for r in chosen} == {"the plot was awful awful", "great great actor"}


def test_demonstrations_are_written_with_their_label_word_in_front_of_the_query(llama):
    pool = toy_rows(6, seed=2)
    pm = _pm(llama, Demonstrations(pool, {"k": 1, "select": "random", "separator": " | "}))
    query = {"text": "it was very nice"}
    r = pm.render(query)
    text = llama.tokenizer.decode(r.ids[: r.mask])
    demos = pm.demonstrations.choose(query)
    expected = "".join(f"Review: {d['text']} Sentiment: {WORDS[d['label']]} | " for d in demos)
    assert text == expected + "Review: it was very nice Sentiment:"
    plain = _pm(llama).render(query)
    assert r.ids[len(r.ids) - len(plain.ids):] == plain.ids and r.mask - plain.mask == len(r.ids) - len(plain.ids)


@pytest.mark.parametrize("max_length", [12, 24, 40, 64])
def test_demonstrations_respect_the_length_budget_and_go_before_the_query_is_cut(llama, max_length):
    pool = [{"text": " ".join(["the movie was very good"] * (1 + i % 3)), "label": "positive" if i % 2 else "negative"} for i in range(8)]
    with_demos = _pm(llama, Demonstrations(pool, {"k": 2, "min_field_tokens": 2}), max_length=max_length)
    alone = _pm(llama, max_length=max_length)
    for q in toy_rows(6, seed=3):
        r, plain = with_demos.render(q), alone.render(q)
        assert len(r.ids) <= max_length - with_demos.reserve
        assert r.ids[len(r.ids) - len(plain.ids):] == plain.ids  # the query is rendered exactly as without demonstrations
        assert r.truncated == plain.truncated
    # a budget of 64 leaves room for demonstrations, 12 for none
    q = {"text": "it was nice"}
    n_extra = len(with_demos.render(q).ids) - len(alone.render(q).ids)
    assert (n_extra > 0) == (max_length >= 24)


def test_a_demonstration_that_does_not_fit_is_cut_in_its_input_not_in_its_label(llama):
    pool = [{"text": "the film was very good " * 20, "label": "positive"}, {"text": "bad", "label": "negative"}]
    pm = _pm(llama, Demonstrations(pool, {"k": 1, "select": "similar"}), max_length=40)
    r = pm.render({"text": "nice"})
    text = llama.tokenizer.decode(r.ids)
    assert len(r.ids) <= 40
    assert "Sentiment: good" in text and "Sentiment: bad" in text


def test_training_with_demonstrations_and_the_artifact_round_trip(llama, tmp_path):
    train = toy_rows(16, seed=4)
    pm = PromptModel(llama, "{soft*2} " + TEMPLATE, WORDS, "soft-prompt", demonstrations=Demonstrations(train, {"k": 1}))
    pm.fit(train, None, lr=0.05, max_steps=3, progress=False)
    test = toy_rows(8, seed=5)
    before = pm.predict_log_probs(test)
    pm.save(tmp_path / "a")
    back = load(tmp_path / "a", backbone=llama)
    assert back.demonstrations is not None and back.demonstrations.pool == train
    torch.testing.assert_close(back.predict_log_probs(test), before)
    assert not torch.allclose(_pm(llama).predict_log_probs(test), _pm(llama, Demonstrations(train, {"k": 1})).predict_log_probs(test))


def test_demonstration_errors_are_clear(llama):
    with pytest.raises(ConfigError, match="labelled examples"):
        _pm(llama, Demonstrations([], {}))
    with pytest.raises(Exception, match="neutral"):
        _pm(llama, Demonstrations([{"text": "x", "label": "neutral"}], {}))
    with pytest.raises(ConfigError, match="one \\{mask\\}"):
        _pm(llama, Demonstrations(toy_rows(4), {"template": "{text}"}))


def test_config_key_turns_demonstrations_on_in_a_run(tmp_path, saved_tiny):
    import json

    from prompttune.config import load_config
    from prompttune.pipeline import run_training

    write_jsonl(tmp_path / "train.jsonl", toy_rows(24, seed=6))
    cfg = load_config(None, [f"model.name={saved_tiny('llama')}", f"data.train={tmp_path / 'train.jsonl'}",
                             f"data.test={tmp_path / 'train.jsonl'}", "data.shots_per_class=6", "data.test_size=8",
                             f"prompt.template={TEMPLATE}", "prompt.verbalizer={negative: bad, positive: good}",
                             "prompt.demonstrations={k: 1, select: similar}", "method.name=zero-shot", f"output={tmp_path / 'out'}",
                             "train.progress=false"])
    res = run_training(cfg, progress=False, log=lambda *a: None)
    meta = json.loads((tmp_path / "out" / "prompt.json").read_text())
    assert meta["demonstrations"]["config"]["select"] == "similar" and len(meta["demonstrations"]["pool"]) == 12
    assert res["n"] == 8
