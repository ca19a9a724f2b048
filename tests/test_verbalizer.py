"""Tests for prompttune.verbalizer: construction, checks, encoding label words, class scores, calibration."""

from __future__ import annotations

import json
import math

import pytest
import torch

from prompttune.errors import PromptTuneError, VerbalizerError
from prompttune.verbalizer import CONTENT_FREE_INPUTS, Verbalizer

try:
    from _toktools import bpe_tokenizer, dropping_tokenizer, unk_tokenizer
except ImportError:  # tests/ imported as a package
    from tests._toktools import bpe_tokenizer, dropping_tokenizer, unk_tokenizer


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer()


def enc(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


SPEC = {"negative": " terrible", "positive": [" great", " good"]}


# ---------------------------------------------------------------------------------------------
# Construction
# ---------------------------------------------------------------------------------------------

def test_from_dict_single_word_and_word_lists():
    v = Verbalizer.from_spec(SPEC)
    assert v.words == {"negative": [" terrible"], "positive": [" great", " good"]}
    assert v.labels == ["negative", "positive"]
    assert v.calibration is None


def test_from_list_each_label_is_its_own_word():
    v = Verbalizer.from_spec(["yes", "no", "maybe"])
    assert v.words == {"yes": ["yes"], "no": ["no"], "maybe": ["maybe"]}
    assert v.labels == ["yes", "no", "maybe"]


def test_labels_are_stringified():
    v = Verbalizer({0: "bad", 1: ("good", "great")})
    assert v.labels == ["0", "1"]
    assert v.words["1"] == ["good", "great"]
    assert v.label_index(1) == 1


def test_from_json_file(tmp_path):
    path = tmp_path / "verbalizer.json"
    path.write_text(json.dumps({"负面": ["差"], "正面": ["好", "很好"]}, ensure_ascii=False), encoding="utf-8")
    v = Verbalizer.from_spec(str(path))
    assert v.words == {"负面": ["差"], "正面": ["好", "很好"]}
    assert Verbalizer.from_spec(path).words == v.words


def test_from_json_file_with_a_list(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text('["yes", "no"]', encoding="utf-8")
    assert Verbalizer.from_spec(path).labels == ["yes", "no"]


def test_from_spec_passes_a_verbalizer_through():
    v = Verbalizer(SPEC)
    assert Verbalizer.from_spec(v) is v


@pytest.mark.parametrize("content", ['{"negative": ["bad"],', "not json", b"\xff\xfe{}"])
def test_bad_json_file_is_a_verbalizer_error(tmp_path, content):
    path = tmp_path / "v.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(VerbalizerError) as e:
        Verbalizer.from_spec(str(path))
    assert "not valid UTF-8 JSON" in e.value.what
    assert "JSON object" in e.value.fix


def test_missing_json_file_is_a_verbalizer_error(tmp_path):
    with pytest.raises(VerbalizerError) as e:
        Verbalizer.from_spec(str(tmp_path / "nope.json"))
    assert "does not exist" in e.value.what and e.value.fix == "check the path"


def test_unreadable_json_path_is_a_verbalizer_error(tmp_path):
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(VerbalizerError) as e:
        Verbalizer.from_spec(str(tmp_path / "dir.json"))
    assert "cannot be read" in e.value.what


@pytest.mark.parametrize("words", [
    {"negative": "", "positive": "good"},
    {"negative": "   ", "positive": "good"},
    {"negative": [], "positive": "good"},
    {"negative": ["bad", ""], "positive": "good"},
    {"negative": ["bad", 3], "positive": "good"},
])
def test_empty_or_non_text_word_is_an_error(words):
    with pytest.raises(VerbalizerError) as e:
        Verbalizer(words)
    assert "'negative'" in e.value.what
    assert e.value.where == "verbalizer"
    assert "non-empty word" in e.value.fix


@pytest.mark.parametrize("value", [5, None, {"a": 1}])
def test_label_mapped_to_non_word_is_an_error(value):
    with pytest.raises(VerbalizerError) as e:
        Verbalizer({"negative": value, "positive": "good"})
    assert "'negative'" in e.value.what


def test_json_file_with_non_word_value_is_a_verbalizer_error(tmp_path):
    path = tmp_path / "v.json"
    path.write_text('{"negative": 1, "positive": null}', encoding="utf-8")
    with pytest.raises(VerbalizerError):
        Verbalizer.from_spec(path)


@pytest.mark.parametrize("spec", [{}, [], "positive", 3])
def test_nothing_usable_is_an_error(spec):
    with pytest.raises(VerbalizerError) as e:
        Verbalizer.from_spec(spec)
    assert "label" in e.value.what and e.value.fix


def test_verbalizer_error_is_a_prompttune_error():
    assert issubclass(VerbalizerError, PromptTuneError)


def test_to_dict_from_dict_round_trip():
    v = Verbalizer(SPEC, calibration=[-0.5, -1.0])
    w = Verbalizer.from_dict(json.loads(json.dumps(v.to_dict())))
    assert w.words == v.words and w.labels == v.labels and w.calibration == [-0.5, -1.0]


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------

def test_check_labels_accepts_known_labels():
    Verbalizer(SPEC).check_labels(["positive", "negative", "positive"])


def test_check_labels_unknown_labels_are_listed():
    with pytest.raises(VerbalizerError) as e:
        Verbalizer(SPEC).check_labels(["positive", "neutral", "mixed", "neutral"], where="training data")
    err = e.value
    assert "['mixed', 'neutral']" in err.what
    assert "['negative', 'positive']" in err.what
    assert "training data" in err.what and err.where == "training data"
    assert "add them to the verbalizer" in err.fix


def test_check_labels_lists_at_most_five_unknown():
    with pytest.raises(VerbalizerError) as e:
        Verbalizer(SPEC).check_labels([f"l{i}" for i in range(9)])
    assert "['l0', 'l1', 'l2', 'l3', 'l4']" in e.value.what and "l5" not in e.value.what


def test_label_index_and_unknown_label():
    v = Verbalizer(SPEC)
    assert v.label_index("positive") == 1
    with pytest.raises(VerbalizerError) as e:
        v.label_index("neutral")
    assert "'neutral'" in e.value.what


# ---------------------------------------------------------------------------------------------
# Encoding label words
# ---------------------------------------------------------------------------------------------

def test_encode_multi_token_words_whole(tok):
    v = Verbalizer({"negative": ["terrible movie", "bad"], "positive": "wonderful excellent film"})
    out = v.encode(tok, leading_space=False)
    assert out == [[enc(tok, "terrible movie"), enc(tok, "bad")], [enc(tok, "wonderful excellent film")]]
    assert len(out[0][0]) >= 2 and len(out[1][0]) >= 3


def test_encode_leading_space_prefixes_words_without_one(tok):
    v = Verbalizer({"negative": ["terrible movie", " bad"], "positive": ["\u3000好", "great"]})
    out = v.encode(tok, leading_space=True)
    assert out == [[enc(tok, " terrible movie"), enc(tok, " bad")], [enc(tok, "\u3000好"), enc(tok, " great")]]
    assert out[0][0] != enc(tok, "terrible movie")


def test_encode_chinese_words(tok):
    out = Verbalizer({"负面": "负", "正面": "正"}).encode(tok, leading_space=False)
    assert out == [[enc(tok, "负")], [enc(tok, "正")]]


def test_encode_word_that_becomes_unk_is_an_error():
    utok = unk_tokenizer()
    assert Verbalizer({"neg": "bad", "pos": "good"}).encode(utok, leading_space=False) == [
        [enc(utok, "bad")], [enc(utok, "good")]]
    with pytest.raises(VerbalizerError) as e:
        Verbalizer({"neg": "bad", "pos": "good zebra"}).encode(utok, leading_space=False)
    assert "'good zebra'" in e.value.what and "'pos'" in e.value.what
    assert e.value.where == "verbalizer" and "vocabulary" in e.value.fix


def test_encode_word_that_encodes_to_nothing_is_an_error():
    dtok = dropping_tokenizer()
    assert enc(dtok, "\u2603") == []
    with pytest.raises(VerbalizerError):
        Verbalizer({"neg": "bad", "pos": "\u2603"}).encode(dtok, leading_space=False)


# ---------------------------------------------------------------------------------------------
# Class scores
# ---------------------------------------------------------------------------------------------

def scores_of(probs):
    return torch.tensor(probs, dtype=torch.float64).log()


def test_class_log_probs_hand_computed():
    v = Verbalizer({"neg": "bad", "pos": ["good", "great"]})
    word_class = torch.tensor([0, 1, 1])
    # p(bad), p(good), p(great); class pos = mean(p(good), p(great))
    scores = scores_of([[0.4, 0.1, 0.3], [0.1, 0.5, 0.3], [0.2, 0.1, 0.3]])
    out = v.class_log_probs(scores, word_class)
    expected = torch.tensor([[0.4, 0.2], [0.1, 0.4], [0.2, 0.2]], dtype=torch.float64)
    expected = expected / expected.sum(1, keepdim=True)
    assert torch.allclose(out.exp(), expected, atol=1e-9)
    assert torch.allclose(out.exp().sum(-1), torch.ones(3, dtype=torch.float64))


def test_class_log_probs_words_in_any_order():
    v = Verbalizer({"neg": "bad", "pos": ["good", "great"]})
    scores = scores_of([[0.1, 0.4, 0.3]])  # good, bad, great
    out = v.class_log_probs(scores, torch.tensor([1, 0, 1]))
    assert torch.allclose(out.exp(), torch.tensor([[0.4 / 0.6, 0.2 / 0.6]], dtype=torch.float64))


def test_class_log_probs_is_stable_for_very_negative_scores():
    v = Verbalizer({"a": "x", "b": ["y", "z"]})
    scores = torch.tensor([[-1000.0, -1000.0 + math.log(2), -1000.0 - 50.0]])
    out = v.class_log_probs(scores, torch.tensor([0, 1, 1]))
    assert torch.isfinite(out).all()
    # b: log mean(2e, ~0) = log(1e) -> uniform
    assert torch.allclose(out.exp(), torch.tensor([[0.5, 0.5]]), atol=1e-6)


def test_class_log_probs_is_differentiable():
    v = Verbalizer({"a": "x", "b": ["y", "z"]})
    scores = torch.randn(4, 3, requires_grad=True)
    v.class_log_probs(scores, torch.tensor([0, 1, 1]))[:, 0].sum().backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all()


def test_calibration_makes_content_free_input_uniform():
    v = Verbalizer({"neg": "bad", "neu": "okay", "pos": ["good", "great"]})
    word_class = torch.tensor([0, 1, 2, 2])
    content_free = scores_of([[0.5, 0.1, 0.3, 0.1]])
    v.set_calibration(v.class_log_probs(content_free, word_class, calibrate=False))
    assert v.calibration is not None and len(v.calibration) == 3
    out = v.class_log_probs(content_free, word_class)
    assert torch.allclose(out.exp(), torch.full((1, 3), 1 / 3, dtype=torch.float64), atol=1e-9)
    # calibrate=False ignores the stored bias
    raw = v.class_log_probs(content_free, word_class, calibrate=False).exp()
    assert torch.allclose(raw, torch.tensor([[0.5, 0.1, 0.2]], dtype=torch.float64) / 0.8)


def test_calibration_divides_by_content_free_probabilities():
    v = Verbalizer({"neg": "bad", "pos": "good"})
    wc = torch.tensor([0, 1])
    v.set_calibration(v.class_log_probs(scores_of([[0.8, 0.2]]), wc, calibrate=False))
    out = v.class_log_probs(scores_of([[0.5, 0.5]]), wc).exp()
    # p / p_cf = [0.5/0.8, 0.5/0.2] normalised
    expected = torch.tensor([[0.625, 2.5]], dtype=torch.float64) / 3.125
    assert torch.allclose(out, expected, atol=1e-9)


def test_set_calibration_uses_mean_probability_of_content_free_rows():
    v = Verbalizer({"neg": "bad", "pos": "good"})
    v.set_calibration(torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.7, 0.3]]).log())
    assert v.calibration == pytest.approx([math.log(0.7), math.log(0.3)], abs=1e-6)


def test_content_free_inputs():
    assert CONTENT_FREE_INPUTS == ("N/A", "", "[MASK]")
