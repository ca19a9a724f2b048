"""Every model family scores label words correctly, with soft tokens, either padding side."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_backbone, toy_rows
from prompttune.backbone import Backbone
from prompttune.errors import BackboneError, ConfigError
from prompttune.model import PromptModel

LM_KINDS = ["llama", "gpt2", "bert-mlm", "t5"]
VERB = {"negative": ["bad", "poor"], "positive": "good"}


def _model(kind, template="{soft*3} Review: {text} Sentiment: {mask}", verbalizer=VERB, method=None, **kw):
    bb = tiny_backbone(kind)
    method = method or ("head-finetune" if kind == "bert-head" else "soft-prompt")
    pm = PromptModel(bb, template, verbalizer, method, **kw)
    if pm.method.soft is not None:  # non-trivial soft rows so a misplaced row would show
        torch.manual_seed(1)
        pm.method.soft.weight.data.normal_(0, 1.0)
    return pm


@pytest.mark.parametrize("kind", LM_KINDS)
def test_fast_single_token_path_equals_full_likelihood_path(kind):
    pm = _model(kind)
    rows = toy_rows(6)
    assert pm.fast
    fast = pm.predict_log_probs(rows)
    pm.fast = False
    full = pm.predict_log_probs(rows)
    torch.testing.assert_close(fast, full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", LM_KINDS + ["bert-head"])
def test_left_and_right_padding_give_the_same_predictions(kind):
    rows = toy_rows(7)
    right = _model(kind, padding_side="right").predict_log_probs(rows, batch_size=7)
    left = _model(kind, padding_side="left").predict_log_probs(rows, batch_size=7)
    torch.testing.assert_close(left, right, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", LM_KINDS + ["bert-head"])
def test_batched_scores_equal_one_at_a_time(kind):
    pm = _model(kind)
    rows = toy_rows(5)
    together = pm.predict_log_probs(rows, batch_size=5)
    alone = torch.cat([pm.predict_log_probs([r], batch_size=1) for r in rows])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)


def test_soft_rows_are_written_exactly_at_soft_positions():
    pm = _model("llama")
    batch = pm.collate(toy_rows(3))
    emb = pm.method.embed(pm.backbone, batch.input_ids, batch.soft_index)
    plain = pm.backbone.embed(batch.input_ids)
    is_soft = batch.soft_index >= 0
    assert int(is_soft.sum()) == 3 * 3
    torch.testing.assert_close(emb[is_soft], pm.method.soft()[batch.soft_index[is_soft]])
    torch.testing.assert_close(emb[~is_soft], plain[~is_soft])


def test_causal_multi_token_word_is_scored_by_its_whole_likelihood():
    """A two-token label word's score is log p(t1|prompt) + log p(t2|prompt,t1), computed by hand here, up to one
    constant per example (the first position's normaliser, shared by every word: only the words' rows are read there)."""
    pm = _model("llama", template="Review: {text} Sentiment: {mask}", verbalizer={"a": "good great", "b": "bad"}, method="zero-shot")
    assert not pm.fast and len(pm.word_ids[0]) == 2
    row = toy_rows(1)[0]
    batch = pm.collate([row])
    with torch.no_grad():
        scores = pm.backbone.family.word_scores(pm.method.model_inputs(pm.backbone, batch), batch)
    tok = pm.backbone.tokenizer
    prompt = tok(f"Review: {row['text']} Sentiment:", add_special_tokens=False)["input_ids"]
    offsets = []
    for w, word in enumerate(pm.word_ids):
        ids = torch.tensor([prompt + word])
        with torch.no_grad():
            logp = pm.backbone.model(ids).logits.log_softmax(-1)[0]
        manual = sum(float(logp[len(prompt) - 1 + k, t]) for k, t in enumerate(word))
        offsets.append(float(scores[0, w]) - manual)
    assert max(offsets) - min(offsets) < 1e-4, offsets


def test_causal_mask_before_the_input_is_scored_by_label_likelihood():
    pm = _model("llama", template="Answer: {mask} review: {text}")
    assert not pm.fast  # the text after the mask is part of each label's likelihood
    lp = pm.predict_log_probs(toy_rows(3))
    assert lp.shape == (3, 2) and torch.allclose(lp.exp().sum(-1), torch.ones(3))


def test_masked_lm_fills_the_mask_slot_with_mask_tokens():
    pm = _model("bert-mlm", verbalizer={"a": "good great", "b": "bad"})
    batch = pm.collate(toy_rows(1))
    mask_id = pm.backbone.tokenizer.mask_token_id
    # one row per word, each with as many mask tokens as that word has tokens
    assert [int((r == mask_id).sum()) for r in batch.input_ids] == [len(w) for w in pm.word_ids]


def test_seq2seq_puts_the_word_in_the_decoder():
    pm = _model("t5", verbalizer={"a": "good great", "b": "bad"})
    batch = pm.collate(toy_rows(1))
    sentinel = pm.backbone.tokenizer.convert_tokens_to_ids("<extra_id_0>")
    assert (batch.input_ids == sentinel).sum() == 2  # the encoder keeps a sentinel in the mask slot
    assert batch.decoder_input_ids[0, 1] == sentinel  # the decoder starts with it, then the word


def test_head_finetune_needs_an_encoder_head_backbone():
    with pytest.raises(ConfigError, match="encoder-head"):
        PromptModel(tiny_backbone("llama"), "{text}", ["negative", "positive"], "head-finetune")


def test_head_template_needs_no_mask_and_drops_one():
    pm = _model("bert-head", template="Review: {text} It was {mask}.")
    assert pm.render(toy_rows(1)[0]).mask is None


@pytest.mark.parametrize("kind,family", [("llama", "causal-lm"), ("gpt2", "causal-lm"), ("bert-mlm", "masked-lm"), ("t5", "seq2seq")])
def test_family_is_detected_from_a_saved_checkpoint(saved_tiny, kind, family):
    assert Backbone.load(saved_tiny(kind)).family.name == family


def test_loading_an_encoder_without_mlm_head_as_masked_lm_is_refused(saved_tiny):
    with pytest.raises(BackboneError, match="no masked-LM head"):
        Backbone.load(saved_tiny("bert-head"), family="masked-lm")


def test_unknown_model_names_say_how_to_fix(tmp_path):
    with pytest.raises(BackboneError, match="smollm2-135m"):
        Backbone.load(str(tmp_path / "nope"))


def test_fingerprint_tells_backbones_apart():
    a, b = tiny_backbone("llama"), tiny_backbone("llama")
    assert a.fingerprint() == b.fingerprint()
    with torch.no_grad():
        b.model.get_input_embeddings().weight[0, 0] += 1.0
    assert a.fingerprint() != b.fingerprint()


@pytest.mark.parametrize("kind", LM_KINDS)
def test_contextual_calibration_makes_content_free_input_uniform(kind):
    pm = _model(kind, method="zero-shot", template="Review: {text} Sentiment: {mask}")
    bias = pm.calibrate()
    assert len(bias) == 2 and pm.verbalizer.calibration == bias
    cf = pm.predict_log_probs([{"text": "N/A"}, {"text": ""}, {"text": "[MASK]"}]).exp().mean(0)
    assert torch.allclose(cf, torch.full((2,), 0.5), atol=0.15)
    uncal = pm.predict_log_probs(toy_rows(4), calibrate=False)
    cal = pm.predict_log_probs(toy_rows(4))
    torch.testing.assert_close(cal, (uncal - torch.tensor(bias)).log_softmax(-1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", LM_KINDS)
def test_template_placement_starts_exactly_at_the_zero_shot_prompt(kind):
    bb = tiny_backbone(kind)
    template = "Review: {text} Sentiment: {mask}"
    zero = PromptModel(bb, template, VERB, "zero-shot").predict_log_probs(toy_rows(5))
    soft = PromptModel(bb, template, VERB, "soft-prompt", method_options={"placement": "template"})
    assert soft.template.text == "{soft:Review:} {text} {soft:Sentiment:} {mask}"
    torch.testing.assert_close(soft.predict_log_probs(toy_rows(5)), zero, atol=1e-5, rtol=1e-5)


def test_prefix_placement_puts_num_tokens_in_front():
    pm = PromptModel(tiny_backbone("llama"), "Review: {text} Sentiment: {mask}", VERB, "soft-prompt",
                     method_options={"placement": "prefix", "num_tokens": 5})
    assert pm.template.text.startswith("{soft*5}") and pm.num_trainable_parameters() == 5 * 32
