"""The output layer is computed only where a score or a loss needs it, with the same numbers as computing it everywhere.

- causal LM, multi-token words: each example's context runs once and every word continues it from its keys/values
  (the shared-context rows); the same class probabilities and gradients as one full row per (example, word).
- masked LM / seq2seq: the vocabulary-sized layer sees only the mask (or target) positions.
- generation losses: only target positions, and in chunks (recomputed in backward) where the vocabulary is large.
"""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_backbone, toy_rows
from prompttune.backbone import causal, families
from prompttune.generation import GenerationModel
from prompttune.model import PromptModel

MULTI = {"negative": ["bad", "awful film"], "positive": ["good great", "nice"]}  # words of one and of two+ tokens
TEMPLATES = ["{soft*3} Review: {text} Sentiment: {mask}",  # mask at the end
             "Review: {text} It was {mask} , really .",  # a tail after the mask: part of each word's likelihood
             "Answer: {mask} review: {text}"]  # mask before the input: the text is in every word's likelihood


def _pm(kind, template, method="soft-prompt", **kw):
    bb = tiny_backbone(kind)
    options = {"num_tokens": 2, "init": "random"} if method == "prefix" else {}
    pm = PromptModel(bb, template, MULTI, method, method_options=options, **kw)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in pm.method.parameters():
            p.normal_(0, 1.0)
    return pm


def _per_word_rows(pm, rows):
    """One full row per (example, word): the layout before the shared context (a server still merges it)."""
    rendered = [pm.render(r) for r in rows]
    batch = pm.backbone.family.build(rendered, pm.word_ids, fast=False, padding_side=pm.padding_side, shared_context=False)
    return pm(batch)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gemma3"])
@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("method", ["soft-prompt", "prefix", "zero-shot"])
def test_shared_context_scores_equal_one_row_per_word(kind, template, method):
    if method == "zero-shot" and "soft" in template:
        template = template.replace("{soft*3} ", "")
    pm = _pm(kind, template, method)
    rows = toy_rows(5)
    assert not pm.fast
    batch = pm.collate(rows)
    assert batch.continuation_width is not None and batch.input_ids.shape[0] == 5 + 5 * len(pm.word_ids)
    with torch.no_grad():
        shared = pm(batch)
        per_word = _per_word_rows(pm, rows)
    torch.testing.assert_close(shared, per_word, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("side", ["left", "right"])
def test_shared_context_is_the_same_batched_alone_and_on_either_padding_side(side):
    pm = _pm("llama", TEMPLATES[0], padding_side=side)
    rows = toy_rows(6)
    together = pm.predict_log_probs(rows, batch_size=6)
    alone = torch.cat([pm.predict_log_probs([r], batch_size=1) for r in rows])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)
    other = _pm("llama", TEMPLATES[0], padding_side="right" if side == "left" else "left").predict_log_probs(rows, batch_size=6)
    torch.testing.assert_close(together, other, atol=1e-4, rtol=1e-4)


def test_shared_context_gradients_equal_one_row_per_word():
    """Training backpropagates through the context's keys/values into the soft prompt exactly as through full rows."""
    rows = toy_rows(4)
    grads = []
    for shared in (True, False):
        pm = _pm("llama", TEMPLATES[0])
        y = pm.labels_tensor(rows)
        out = pm(pm.collate(rows)) if shared else _per_word_rows(pm, rows)
        torch.nn.functional.nll_loss(out, y).backward()
        grads.append(pm.method.soft.weight.grad.clone())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_without_a_cache_the_context_is_repeated_with_the_same_scores():
    """Gradient checkpointing while training turns the model's cache off: the family then repeats each context in front
    of its continuations, and the scores are unchanged."""
    pm = _pm("llama", TEMPLATES[1])
    rows = toy_rows(5)
    with torch.no_grad():
        cached = pm(pm.collate(rows))
    pm.backbone.gradient_checkpointing(True)
    pm.train()
    calls = []
    real = families.CausalLM._repeated_context_scores
    try:
        families.CausalLM._repeated_context_scores = lambda self, *a: calls.append(1) or real(self, *a)
        repeated = pm(pm.collate(rows)).detach()  # with gradients: checkpointing is only active then
    finally:
        families.CausalLM._repeated_context_scores = real
        pm.backbone.gradient_checkpointing(False)
        pm.eval()
    assert calls, "the no-cache fallback did not run"
    torch.testing.assert_close(cached, repeated, atol=1e-4, rtol=1e-4)


def _positions_seen(model) -> tuple[list, callable]:
    """Record the leading shape of every input the output layer computes on."""
    seen = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape[:-1])))
    return seen, handle.remove


@pytest.mark.parametrize("kind", ["bert-mlm", "t5"])
def test_masked_and_seq2seq_scoring_compute_the_vocabulary_only_at_the_masks(kind):
    pm = _pm(kind, "Review: {text} Sentiment: {mask}")
    rows = toy_rows(3)
    for fast in (True, False):
        pm.fast = fast
        if fast:
            pm.word_ids = [w[:1] for w in pm.word_ids]  # single-token words for the fast path
        batch = pm.collate(rows).to(pm.device)
        seen, remove = _positions_seen(pm.backbone.model)
        with torch.no_grad():
            scores = pm.backbone.family.word_scores(pm.method.model_inputs(pm.backbone, batch), batch)
        remove()
        if fast:
            assert seen == [(3,)]  # one position per example
        else:
            assert seen == [tuple(batch.target_pos.shape)]  # each (example, word) row's target positions only
        # the same numbers as the whole output layer gathered afterwards
        inputs = pm.method.model_inputs(pm.backbone, batch)
        extra = {} if batch.decoder_input_ids is None else dict(decoder_input_ids=batch.decoder_input_ids,
                                                                 decoder_attention_mask=batch.decoder_attention_mask, use_cache=False)
        with torch.no_grad():
            full = pm.backbone.model(**inputs, **extra).logits
        ar = torch.arange(full.shape[0])
        if fast:
            want = full[ar, batch.read_pos][:, batch.word_ids]
        else:
            tgt = batch.target_ids
            logp = full[ar[:, None], batch.target_pos.clamp_min(0)].log_softmax(-1)
            want = logp.gather(-1, tgt.clamp_min(0)[..., None]).squeeze(-1).masked_fill(tgt < 0, 0.0).sum(-1).view(3, -1)
        torch.testing.assert_close(scores, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_generation_loss_computes_the_vocabulary_only_at_target_tokens(kind):
    gm = GenerationModel(tiny_backbone(kind), "copy: {src} =>", target="tgt", method="soft-prompt")
    data = [{"src": "the film was good", "tgt": "good"}, {"src": "a very bad plot and actor", "tgt": "bad plot"}]
    batch = gm.collate(data).to(gm.device)
    seen, remove = _positions_seen(gm.backbone.model)
    with torch.no_grad():
        total, n = gm(batch, as_sum=True)
    remove()
    assert seen == [(n,)] and n == batch.n_targets
    # the same loss as the whole output layer, then the target positions
    inputs = gm.method.model_inputs(gm.backbone, batch)
    with torch.no_grad():
        if batch.decoder_input_ids is None:
            logits, labels = gm.backbone.model(**inputs).logits[:, :-1], batch.labels[:, 1:]
        else:
            logits, labels = gm.backbone.model(**inputs, decoder_input_ids=batch.decoder_input_ids,
                                               decoder_attention_mask=batch.decoder_attention_mask).logits, batch.labels
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum")
    torch.testing.assert_close(total, want, atol=1e-4, rtol=1e-5)


def test_chunked_cross_entropy_equals_the_whole_one_in_value_and_gradient(monkeypatch):
    """Above CE_CHUNK logits the loss is summed over chunks of positions recomputed in backward: same loss, same grads."""
    data = [{"src": f"the film was {w}", "tgt": f"{w} very {w} movie"} for w in ("good", "bad", "great", "poor")]
    results = []
    for chunk in (causal.CE_CHUNK, 3 * 400):  # whole; about 3 positions a chunk (vocabulary ~400)
        monkeypatch.setattr(causal, "CE_CHUNK", chunk)
        gm = GenerationModel(tiny_backbone("llama"), "{soft*2} copy: {src} =>", target="tgt", method="soft-prompt")
        torch.manual_seed(0)
        with torch.no_grad():
            gm.method.soft.weight.normal_(0, 1.0)
        total, n = gm(gm.collate(data), as_sum=True)
        total.backward()
        results.append((total.detach(), gm.method.soft.weight.grad.clone(), n))
    assert results[0][2] == results[1][2] > 6  # several chunks
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=1e-4)


def test_a_causal_template_that_starts_with_the_mask_is_refused_with_a_fix():
    """With no start token there is no position to predict the first label token from (it used to read position 0)."""
    from prompttune.errors import TemplateError

    pm = _pm("llama", "{mask} review: {text}", "zero-shot")
    with pytest.raises(TemplateError) as e:
        pm.predict_log_probs(toy_rows(2))
    assert "starts with {mask}" in e.value.what and e.value.where == "prompt.template" and "before {mask}" in e.value.fix
