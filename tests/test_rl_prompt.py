"""rl-prompt: REINFORCE learns a planted reward; batched rewards equal one-by-one scoring; the result is a hard prompt."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_backbone, toy_rows, write_jsonl
from prompttune.artifact import load
from prompttune.methods.rl_prompt import ReinforcePolicy, reinforce, word_tokens
from prompttune.model import PromptModel

WORDS = {"negative": "bad", "positive": "good"}


def test_policy_gradient_reward_rises_on_a_toy_reward():
    target = torch.tensor([4, 7, 11])
    policy = ReinforcePolicy(3, 20)
    means = reinforce(policy, lambda a: (a == target).float().mean(-1), steps=150, samples=8, lr=0.1, seed=0)
    assert sum(means[:10]) / 10 < 0.2  # chance is 1/20 per slot
    assert sum(means[-10:]) / 10 > 0.8
    assert policy.greedy().tolist() == target.tolist()


def test_rewards_are_normalised_around_a_moving_baseline():
    policy = ReinforcePolicy(1, 3, baseline_decay=0.5)
    a = torch.tensor([[0], [1], [2], [2]])
    policy.loss(a, torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert policy.baseline == pytest.approx(2.5)
    assert policy.variance == pytest.approx(1.25)
    policy.loss(a, torch.tensor([5.0, 5.0, 5.0, 5.0]))
    assert policy.baseline == pytest.approx(3.75)
    assert policy.variance == pytest.approx(0.5 * 1.25 + 0.5 * 1.25 ** 2)
    # the update is invariant to the reward scale (advantages are normalised by their spread)
    p1, p2 = ReinforcePolicy(1, 3), ReinforcePolicy(1, 3)
    r = torch.tensor([1.0, 0.0, 3.0, 2.0])
    p1.loss(a, r).backward()
    p2.loss(a, 100 * r).backward()
    torch.testing.assert_close(p1.logits.grad, p2.logits.grad)


@pytest.fixture(scope="module")
def llama():
    return tiny_backbone("llama")


def test_slots_draw_from_whole_word_tokens(llama):
    ids = word_tokens(llama.tokenizer, 1000)
    words = [llama.tokenizer.decode([i]) for i in ids]
    assert " good" in words and " terrible" in words
    assert all(w.startswith(" ") and w.strip().isalpha() for w in words)
    assert len(word_tokens(llama.tokenizer, 5)) == 5


@pytest.mark.parametrize("kind,words", [("llama", WORDS), ("gpt2", WORDS), ("bert-mlm", WORDS), ("t5", WORDS),
                                         ("llama", {"negative": "bad plot", "positive": "good film"})])
def test_batched_rewards_equal_scoring_each_prompt_alone(kind, words):
    bb = tiny_backbone(kind)
    pm = PromptModel(bb, "{text} Sentiment: {mask}", words, "rl-prompt", method_options={"num_tokens": 3})
    rows = toy_rows(6, seed=1)
    actions = torch.tensor([[0, 1, 2], [5, 5, 5], [9, 3, 1]])
    batched = pm.method.rewards(pm, rows, actions)
    y = pm.labels_tensor(rows)
    for s, a in enumerate(actions):
        pm.method.tokens.copy_(pm.method.candidates[a])
        logp = pm.predict_log_probs(rows)
        gold = logp.gather(1, y[:, None]).squeeze(1)
        other = logp.scatter(1, y[:, None], float("-inf")).max(1).values
        assert float(batched[s]) == pytest.approx(float((gold - other).clamp(-20, 20).mean()), abs=1e-4)


def test_fit_follows_the_reward_to_the_planted_prompt(llama, monkeypatch):
    pm = PromptModel(llama, "{text} Sentiment: {mask}", WORDS, "rl-prompt", method_options={"num_tokens": 2, "samples": 8})
    target = torch.tensor([3, 17])
    monkeypatch.setattr(pm.method, "rewards", lambda pm_, rows, a: (a == target).float().mean(-1))
    res = pm.fit(toy_rows(16), None, lr=0.1, max_steps=120, progress=False)
    rewards = [h["reward"] for h in res.history]
    assert sum(rewards[:10]) / 10 < 0.2 and sum(rewards[-10:]) / 10 > 0.8
    assert pm.method.tokens.tolist() == pm.method.candidates[target].tolist()


def test_rl_prompt_trains_forward_only_and_saves_a_readable_hard_prompt(llama, tmp_path):
    pm = PromptModel(llama, "{text} Sentiment: {mask}", WORDS, "rl-prompt", method_options={"num_tokens": 3, "samples": 4})
    before = {k: v.clone() for k, v in llama.model.state_dict().items()}
    train, dev = toy_rows(16, seed=2), toy_rows(12, seed=3)
    res = pm.fit(train, dev, lr=0.1, max_steps=12, eval_every=4, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in llama.model.state_dict().items())
    assert all(p.grad is None for p in llama.model.parameters())
    devs = [h for h in res.history if "accuracy" in h]
    assert devs[0]["step"] == 0 and res.best_dev["loss"] == min(h["loss"] for h in devs)  # metric: loss, start included
    text = pm.method.options.prompt_text
    words = [llama.tokenizer.decode([t]) for t in pm.method.tokens.tolist()]
    assert text == "".join(words) + "{text} Sentiment: {mask}"
    pm.save(tmp_path / "rl")
    meta = json.loads((tmp_path / "rl" / "prompt.json").read_text())
    assert meta["method"]["name"] == "rl-prompt" and meta["method"]["prompt_text"] == text
    back = load(tmp_path / "rl", backbone=llama)
    torch.testing.assert_close(back.predict_log_probs(dev), pm.predict_log_probs(dev))
    # the hard prompt, written as an ordinary template, scores the same as the artifact (here the token boundaries survive
    # re-tokenisation; the artifact keeps the ids, so loading it never depends on that)
    hard = PromptModel(llama, text, WORDS, "zero-shot")
    torch.testing.assert_close(hard.predict_log_probs(dev), pm.predict_log_probs(dev), atol=1e-4, rtol=0)


def test_a_config_run_with_rl_prompt_writes_an_ordinary_artifact(tmp_path, saved_tiny):
    from prompttune.config import load_config
    from prompttune.pipeline import run_training

    write_jsonl(tmp_path / "train.jsonl", toy_rows(24, seed=6))
    cfg = load_config(None, [f"model.name={saved_tiny('llama')}", f"data.train={tmp_path / 'train.jsonl'}",
                             f"data.test={tmp_path / 'train.jsonl'}", "data.shots_per_class=6", "data.test_size=8",
                             "prompt.template={text} Sentiment: {mask}", "prompt.verbalizer={negative: bad, positive: good}",
                             "method.name=rl-prompt", "method.num_tokens=2", "method.samples=3", "train.max_steps=4",
                             "train.progress=false", f"output={tmp_path / 'out'}"])
    res = run_training(cfg, progress=False, log=lambda *a: None)
    meta = json.loads((tmp_path / "out" / "prompt.json").read_text())
    assert res["training"]["steps"] == 4 and meta["method"]["prompt_text"].endswith("{text} Sentiment: {mask}")
    assert load(tmp_path / "out").evaluate(toy_rows(8))["n"] == 8
