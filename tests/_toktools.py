"""Small tokenizers built in memory for tests (no hub access).

``bpe_tokenizer()``: a ByteLevel BPE trained on a few dozen English + Chinese sentences, no specials added.
``bpe_tokenizer(wrap=True)``: the same vocabulary with a post-processor that adds ``<s> $A </s>``.
``unk_tokenizer()``: a word-level tokenizer whose encoding of unseen words yields ``<unk>``.
``dropping_tokenizer()``: a BPE (not byte-level, no unk) that silently drops unseen characters.
"""

from __future__ import annotations

import functools

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]

CORPUS = [
    "The movie was great and the acting was wonderful.",
    "I loved this film, it is a good story with great music.",
    "The plot was terrible and the dialogue was bad.",
    "What a boring and awful waste of time.",
    "Review: an excellent film. Sentiment: positive",
    "Review: a dull and painful movie. Sentiment: negative",
    "Classify the sentiment of the review as positive or negative.",
    "Premise: a man is playing a guitar. Hypothesis: a person plays music.",
    "The answer is yes, no or maybe.",
    "It was a good day, the weather was nice and warm.",
    "The food at the restaurant was delicious but the service was slow.",
    "This product works well and I would buy it again.",
    "Question: is the sky blue? Answer: yes",
    "Sentiment analysis of short English texts is a classic task.",
    "great good terrible bad awful wonderful excellent boring positive negative neutral",
    "The quick brown fox jumps over the lazy dog.",
    "请判断以下文本是正面还是负面。",
    "这部电影非常好看，演员的表演很出色。",
    "这是正面评价。",
    "这是负面评价。",
    "剧情很无聊，浪费了我的时间。",
    "服务态度很好，下次还会再来。",
    "这个产品质量很差，不推荐购买。",
    "今天天气很好，我们去公园散步。",
    "我非常喜欢这本书，故事很感人。",
    "音乐很好听，画面也很漂亮。",
    "中文文本分类是一个常见的任务。",
    "正面 负面 好 差 很好 很差",
]


def _train() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, min_frequency=1, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 3, trainer=trainer)
    return tok


@functools.lru_cache(maxsize=None)
def _trained_json() -> str:
    return _train().to_str()


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", mask_token="<mask>")


@functools.lru_cache(maxsize=None)
def bpe_tokenizer(wrap: bool = False) -> PreTrainedTokenizerFast:
    """The byte-level BPE; with ``wrap`` its post-processor adds ``<s> ... </s>``."""
    tok = Tokenizer.from_str(_trained_json())
    if wrap:
        bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
        tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> $B </s>",
                                                           special_tokens=[("<s>", bos), ("</s>", eos)])
    return _wrap(tok)


@functools.lru_cache(maxsize=None)
def unk_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level vocabulary of a few words; anything else encodes to ``<unk>``."""
    words = SPECIALS + ["good", "bad", "great", "terrible", "the", "movie", "was", "Review", ":", "."]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return _wrap(tok)


@functools.lru_cache(maxsize=None)
def dropping_tokenizer() -> PreTrainedTokenizerFast:
    """A character BPE with no unk token: characters it never saw are dropped (encode to nothing)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=80, special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator(["good bad great terrible"] * 3, trainer=trainer)
    return _wrap(tok)
