"""Prompt search: label words recovered from planted mask predictions, template edits, the `search` command."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import cli_ok, tiny_backbone, toy_rows, write_jsonl
from prompttune import search as S
from prompttune.model import PromptModel
from prompttune.template import Template


@pytest.fixture(scope="module")
def llama():
    return tiny_backbone("llama")


def _planted(pm, plant: dict[str, str], common: str):
    """Mask log-probs where each class's examples make its planted word likely, and one word is likely everywhere."""
    tok = pm.backbone.tokenizer
    ids = {label: tok(" " + w, add_special_tokens=False)["input_ids"] for label, w in plant.items()}
    assert all(len(v) == 1 for v in ids.values())
    common_id = tok(" " + common, add_special_tokens=False)["input_ids"][0]
    V = pm.backbone.model.get_output_embeddings().weight.shape[0]

    def fake(pm_, rows, **kw):
        g = torch.Generator().manual_seed(len(rows))
        logits = torch.randn(len(rows), V, generator=g)
        logits[:, common_id] += 9.0  # a naive "most likely at the mask" ranking would pick it for every class
        for i, r in enumerate(rows):
            logits[i, ids[r["label"]][0]] += 6.0
        return logits.log_softmax(-1)

    return fake


def test_label_word_search_recovers_a_planted_mapping(llama, monkeypatch):
    pm = PromptModel(llama, "Review: {text} Sentiment: {mask}", {"negative": "bad", "positive": "good"}, "zero-shot")
    monkeypatch.setattr(S, "mask_log_probs", _planted(pm, {"negative": "awful", "positive": "great"}, common="the"))
    res = S.search_label_words(pm, toy_rows(16, seed=1), toy_rows(16, seed=2), per_class=4)
    assert res.best.verbalizer == {"negative": ["awful"], "positive": ["great"]}
    assert res.best.dev_accuracy == 1.0 and res.best.train_accuracy == 1.0
    assert all(c.verbalizer["negative"] != c.verbalizer["positive"] for c in res.candidates)
    assert res.seed.verbalizer == {"negative": ["bad"], "positive": ["good"]}
    assert any(c.kind == "seed-words" for c in res.candidates)
    # the common word is likelier than the planted one inside each class, but not relatively to the other class
    assert "the" not in [w for w, _ in res.extra["per_class"]["negative"][:1] + res.extra["per_class"]["positive"][:1]]


def test_cached_scores_equal_the_prompt_models_own(llama):
    pm = PromptModel(llama, "Review: {text} Sentiment: {mask}", {"negative": "bad", "positive": "good"}, "zero-shot")
    dev = toy_rows(12, seed=3)
    res = S.search_label_words(pm, toy_rows(12, seed=4), dev, per_class=3, max_candidates=5)
    for c in res.candidates:
        zs = PromptModel(llama, c.template, c.verbalizer, "zero-shot")
        logp = zs.predict_log_probs(dev)
        y = zs.labels_tensor(dev)
        assert c.dev_accuracy == pytest.approx(float((logp.argmax(-1) == y).float().mean()))
        assert c.dev_loss == pytest.approx(float(F.nll_loss(logp, y)), abs=1e-4)
    ranked = [S.rank_key(c) for c in res.candidates]
    assert ranked == sorted(ranked)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "bert-mlm", "t5"])
def test_mask_log_probs_match_the_label_word_scores(kind):
    pm = PromptModel(tiny_backbone(kind), "{text} It was {mask}", {"negative": "bad", "positive": "good"}, "zero-shot")
    rows = toy_rows(6, seed=5)
    lp = S.mask_log_probs(pm, rows)
    assert lp.shape[0] == 6 and torch.allclose(lp.exp().sum(-1), torch.ones(6), atol=1e-4)
    ids = [pm.word_ids[0][0], pm.word_ids[1][0]]
    torch.testing.assert_close(lp[:, ids].log_softmax(-1), pm.predict_log_probs(rows), atol=1e-4, rtol=0)


def test_template_candidates_edit_one_thing_and_keep_field_and_mask():
    cands = S.template_candidates("Review: {text}\nSentiment: {mask}", {"negative": "bad", "positive": "good"})
    assert cands[0] == ("seed", "Review: {text}\nSentiment: {mask}")
    kinds = {k for k, _ in cands}
    assert kinds == {"seed", "cue", "frame", "instruction"}
    texts = [t for _, t in cands]
    assert len(texts) == len(set(texts))
    assert "Review: {text} It was {mask}" in texts
    assert '"{text}"\nSentiment: {mask}' in texts
    assert "Classify the text as bad or good.\nReview: {text}\nSentiment: {mask}" in texts
    for t in texts:
        tpl = Template(t)
        assert tpl.fields == ["text"] and tpl.n_masks == 1
    pair = S.template_candidates("{premise} Question: {hypothesis}? Answer: {mask}", ["yes", "no"])
    assert not any(k == "frame" for k, _ in pair)  # a frame is only for one-field inputs
    assert all(Template(t).fields == ["premise", "hypothesis"] for _, t in pair)


def test_template_search_scores_each_candidate_like_zero_shot_evaluation(llama):
    pm = PromptModel(llama, "Review: {text} Sentiment: {mask}", {"negative": "bad", "positive": "good"}, "zero-shot")
    dev = toy_rows(12, seed=6)
    res = S.search_templates(pm, toy_rows(8, seed=7), dev, cues=(" It was", "\nAnswer:"), frames=("{field}",), instructions=())
    assert res.seed.template == pm.template.text
    assert len(res.candidates) >= 4
    for c in res.candidates[:3]:
        assert c.dev_accuracy == pytest.approx(PromptModel(llama, c.template, c.verbalizer, "zero-shot").evaluate(dev)["accuracy"])
    ranked = [S.rank_key(c) for c in res.candidates]
    assert ranked == sorted(ranked)


def test_search_refuses_soft_templates_and_head_models(llama):
    from prompttune.errors import PromptTuneError

    pm = PromptModel(llama, "{soft*2} {text} {mask}", ["bad", "good"], "soft-prompt")
    with pytest.raises(PromptTuneError, match="hard prompts"):
        S.search_templates(pm, toy_rows(4), toy_rows(4))


def test_search_command_prints_a_table_and_writes_a_ready_config(monkeypatch, capsys, tmp_path, saved_tiny):
    from prompttune.config import load_config

    for name, seed in (("train", 1), ("dev", 2)):
        write_jsonl(tmp_path / f"{name}.jsonl", toy_rows(16, seed=seed))
    cfg = {"model": {"name": saved_tiny("llama")},
           "prompt": {"template": "Review: {text} Sentiment: {mask}", "verbalizer": {"negative": "bad", "positive": "good"}},
           "method": {"name": "soft-prompt", "num_tokens": 4},
           "data": {"train": str(tmp_path / "train.jsonl"), "dev": str(tmp_path / "dev.jsonl"), "test": None, "shots_per_class": 8},
           "train": {"max_steps": 3, "progress": False}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    best = tmp_path / "best.yaml"

    def run(*args):
        return cli_ok(monkeypatch, capsys, *args)

    out = run("search", tmp_path / "run.yaml", "--what", "both", "--per-class", "3", "--generate", "1", "--output", best)
    assert "verbalizer candidates" in out and "template candidates" in out and "dev acc" in out
    written = load_config(best)
    assert written.method.name == "soft-prompt" and written.method.options() == {"num_tokens": 4}  # the user's method is kept
    js = json.loads(run("search", tmp_path / "run.yaml", "--what", "both", "--per-class", "3", "--generate", "1", "--json"))
    assert any(c["kind"] == "generated" for c in js["template"])
    assert written.prompt.template == js["template"][0]["template"]
    words = js["template"][0]["verbalizer"]
    assert {l: [w] if isinstance(w, str) else w for l, w in written.prompt.verbalizer.items()} == words
    assert js["verbalizer"][0]["verbalizer"] == words
    assert not list(tmp_path.glob(".best.yaml.*"))  # atomic write leaves no temporary file


def test_generated_cues_follow_the_models_proposals_and_the_label_score(llama, monkeypatch):
    pm = PromptModel(llama, "Review: {text} Sentiment: {mask}", {"negative": "bad", "positive": "good"}, "zero-shot")
    tok = llama.tokenizer
    boosted = {tok(" " + w, add_special_tokens=False)["input_ids"][0]: b for w, b in (("very", 5.0), ("it", 4.5), ("was", 4.0))}
    V = llama.model.get_output_embeddings().weight.shape[0]

    def fake_mask(pm_, rows, **kw):
        logits = torch.zeros(len(rows), V)
        for t, b in boosted.items():
            logits[:, t] = b
        return logits.log_softmax(-1)

    seen = []

    def fake_score(pm_, template, words, rows, **kw):
        seen.append(template)
        # " it" alone scores no better than " was", and " very" beats both: only the beam finds " it was"
        return 0.0, -(3 * template.count(" it was") + template.count(" very"))

    monkeypatch.setattr(S, "mask_log_probs", fake_mask)
    monkeypatch.setattr(S, "score_prompt", fake_score)
    made = S.generate_cues(pm, toy_rows(16), length=2, beam=2, proposals=3)
    assert made[0][0] == "Review: {text} it was {mask}"
    assert all(t.startswith("Review: {text} ") and t.endswith(" {mask}") for t, _ in made)
    assert [s for _, s in made] == sorted((s for _, s in made), reverse=True)
    assert all(Template(t).n_masks == 1 for t in seen)


def test_generated_cues_on_a_real_tiny_model_are_scored_as_zero_shot_prompts(llama):
    pm = PromptModel(llama, "{text} Sentiment: {mask}", {"negative": "bad", "positive": "good"}, "zero-shot")
    rows = toy_rows(8, seed=9)
    made = S.generate_cues(pm, rows, length=2, beam=2, proposals=2, examples_per_class=4)
    assert 2 <= len(made) <= 4
    for t, score in made:
        zs = PromptModel(llama, t, {"negative": "bad", "positive": "good"}, "zero-shot")
        assert score == pytest.approx(-float(F.nll_loss(zs.predict_log_probs(rows), zs.labels_tensor(rows))), abs=1e-4)
    res = S.search_templates(pm, rows, toy_rows(8, seed=10), generate=2, cues=(), frames=(), instructions=())
    assert sum(c.kind == "generated" for c in res.candidates) >= 1


def test_search_with_demonstrations_scores_each_candidate_with_its_own_demonstrations(llama):
    from prompttune.demonstrations import Demonstrations

    train, dev = toy_rows(12, seed=11), toy_rows(8, seed=12)
    pm = PromptModel(llama, "Review: {text} Sentiment: {mask}", {"negative": "bad", "positive": "good"}, "zero-shot",
                     demonstrations=Demonstrations(train, {"k": 1}))
    before = pm.render(dev[0]).ids
    res = S.search_templates(pm, train, dev, cues=(" It was",), frames=(), instructions=())
    pm._render_cache.clear()
    assert pm.render(dev[0]).ids == before  # the searched model's demonstrations are untouched
    cue = next(c for c in res.candidates if c.kind == "cue")
    zs = PromptModel(llama, cue.template, cue.verbalizer, "zero-shot", demonstrations=Demonstrations(train, {"k": 1}))
    ids, alone = zs.render(dev[0]).ids, PromptModel(llama, cue.template, cue.verbalizer, "zero-shot").render(dev[0]).ids
    assert " It was" in llama.tokenizer.decode(ids[: len(ids) - len(alone)])  # demonstrations written with the candidate
    assert cue.dev_accuracy == pytest.approx(zs.evaluate(dev)["accuracy"])
