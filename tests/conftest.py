"""Tiny random models and a tokenizer built in the tests: they check mechanics, never quality.

The models use a large init range so their outputs depend on the context (with the usual 0.02 a
2-layer random model is nearly constant and nothing can be learnt through it). T5 is the exception: its own
init already scales by width, and a factor of 3 on top saturated its logits (log-probs near -20), so training
on it was chaotic and its result changed with the CPU's float kernels (ATEN_CPU_CAPABILITY=avx2 vs avx512
gave a loss of 6.9 vs 8.1 from the same start). With factor 1.5 and no dropout it trains the same under every
kernel (the loss of the soft-prompt toy task halves on each of 4 init seeds); factor 1 trains too, but its
generations barely depend on the prompt."""

from __future__ import annotations

import os
import random

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ("good great fine nice bad awful poor terrible movie film plot actor story the a was is it this and very not "
         "positive negative review sentiment yes no maybe").split()
CORPUS = [" ".join(random.Random(i).choices(WORDS, k=12)) for i in range(200)] + [
    "Review: the film was great", "Sentiment: positive", "Sentiment: negative", "请判断以下文本是正面还是负面", "这是正面评价"]
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<mask>", "<extra_id_0>"]


def make_tokenizer(post: str | None = None):
    """A byte-level BPE trained in memory. ``post``: a TemplateProcessing single template, e.g. '<s> $A </s>'."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    if post:
        tok.post_processor = processors.TemplateProcessing(
            single=post, special_tokens=[(s, tok.token_to_id(s)) for s in ("<s>", "</s>") if s in post])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", mask_token="<mask>")


def _tiny(kind: str, tok, num_labels: int = 2, seed: int = 0):
    import transformers as T

    torch.manual_seed(seed)
    V = len(tok)
    if kind == "llama":
        cfg = T.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, max_position_embeddings=256, pad_token_id=tok.pad_token_id, initializer_range=0.3,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
        return T.LlamaForCausalLM(cfg)
    if kind == "gemma3":  # sliding-window layers (window 4, shorter than the rows) and logit soft-capping, as Gemma-3
        cfg = T.Gemma3TextConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                 num_key_value_heads=2, head_dim=8, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                                 initializer_range=0.3, sliding_window=4, final_logit_softcapping=5.0,
                                 layer_types=["sliding_attention", "sliding_attention", "full_attention"])
        return T.Gemma3ForCausalLM(cfg)
    if kind == "gpt2":
        cfg = T.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=256, pad_token_id=tok.pad_token_id, initializer_range=0.3,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        return T.GPT2LMHeadModel(cfg)
    bert = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=256, pad_token_id=tok.pad_token_id, initializer_range=0.3)
    if kind == "bert-mlm":
        return T.BertForMaskedLM(T.BertConfig(**bert))
    if kind == "bert-head":
        return T.BertForSequenceClassification(T.BertConfig(**bert, num_labels=num_labels))
    if kind == "t5":
        cfg = T.T5Config(vocab_size=V, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_decoder_layers=2, num_heads=4,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id, initializer_factor=1.5, dropout_rate=0.0)
        return T.T5ForConditionalGeneration(cfg)
    raise ValueError(kind)


POST = {"llama": None, "gemma3": None, "gpt2": None, "bert-mlm": "<s> $A </s>", "bert-head": "<s> $A </s>", "t5": "$A </s>"}
FAMILY = {"llama": "causal-lm", "gemma3": "causal-lm", "gpt2": "causal-lm", "bert-mlm": "masked-lm", "bert-head": "encoder-head", "t5": "seq2seq"}


def tiny_backbone(kind: str, num_labels: int = 2, seed: int = 0):
    """``seed``: the random init; bounds on trained numbers are measured over several."""
    from prompttune.backbone import Backbone

    tok = make_tokenizer(POST[kind])
    model = _tiny(kind, tok, num_labels, seed).eval()
    return Backbone(model, tok, family=FAMILY[kind], name=f"tiny-{kind}")


@pytest.fixture(scope="session")
def saved_tiny(tmp_path_factory):
    """Save tiny models to directories, as a user's local checkpoint would be."""
    cache = {}

    def get(kind: str):
        if kind not in cache:
            d = tmp_path_factory.mktemp(f"tiny-{kind}")
            bb = tiny_backbone(kind)
            bb.model.save_pretrained(d)
            bb.tokenizer.save_pretrained(d)
            cache[kind] = str(d)
        return cache[kind]

    return get


def toy_rows(n: int, seed: int = 0) -> list[dict]:
    """A learnable toy task: the label is whether the text contains a positive or a negative word."""
    rng = random.Random(seed)
    pos, neg, filler = ["good", "great", "nice"], ["bad", "awful", "poor"], ["the", "movie", "film", "plot", "was", "very", "it"]
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        words = rng.choices(filler, k=rng.randint(2, 8))
        words.insert(rng.randint(0, len(words)), rng.choice(pos if label == "positive" else neg))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_jsonl(path, rows) -> str:
    """Rows as a JSON-lines file; returns its path."""
    import json

    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return str(path)


def write_csv(path, rows) -> str:
    """Rows with text and label columns as a CSV file; returns its path."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(rows)
    return str(path)


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run the ``prompttune`` command line in this process: (exit code, stdout, stderr)."""
    import sys

    from prompttune.cli import main

    monkeypatch.setattr(sys, "argv", ["prompttune", *map(str, args)])
    capsys.readouterr()  # what fixtures printed is not the command's (e.g. DeepSpeed's import notice, when installed)
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def cli_ok(monkeypatch, capsys, *args) -> str:
    """Run the command line, require exit code 0, return stdout."""
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    return out
