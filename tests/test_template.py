"""Tests for prompttune.template: parsing, errors, checks, rendering, truncation, fuzzing."""

from __future__ import annotations

import random

import pytest

from prompttune.errors import PromptTuneError, TemplateError
from prompttune.template import (MAX_SOFT_TOKENS, Field, Mask, Rendered, Renderer, Soft, Template, Text, fill_mask,
                                 parse, special_tokens_around, tail_is_empty)

try:
    from _toktools import bpe_tokenizer
except ImportError:  # tests/ imported as a package
    from tests._toktools import bpe_tokenizer


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer()


@pytest.fixture(scope="module")
def wtok():
    """Same vocabulary, post-processor adds <s> ... </s>."""
    return bpe_tokenizer(wrap=True)


def enc(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"] if text else []


def renderer(tok, text: str, max_length: int = 128, **kw) -> Renderer:
    return Renderer(Template(text), tok, max_length=max_length, placeholder_id=tok.mask_token_id, **kw)


ZH = "请判断以下文本是正面还是负面：{text} 这是{mask}面评价。"


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------

def test_parse_literal_text_is_one_text_segment():
    assert parse("just words, no slots") == [Text("just words, no slots")]


def test_parse_fields_mask_and_text_in_order():
    assert parse("Review: {text} Sentiment: {mask}") == [Text("Review: "), Field("text"), Text(" Sentiment: "), Mask()]


def test_parse_field_names_with_digits_underscore_and_dash():
    assert parse("{premise_1}{hypo-2}{_x}") == [Field("premise_1"), Field("hypo-2"), Field("_x")]


@pytest.mark.parametrize("body, expected", [
    ("soft", Soft(count=None)),
    ("soft*20", Soft(count=20)),
    ("soft*1", Soft(count=1)),
    (f"soft*{MAX_SOFT_TOKENS}", Soft(count=MAX_SOFT_TOKENS)),
    ("soft*007", Soft(count=7)),
    ("soft:init words", Soft(count=None, init="init words")),
    ("soft*8:words", Soft(count=8, init="words")),
    ("soft:Classify the sentiment: a*b#c", Soft(count=None, init="Classify the sentiment: a*b#c")),
    ("soft#name*4", Soft(count=4, name="name")),
    ("soft#q", Soft(count=None, name="q")),
    ("soft#q-1*2:hello there", Soft(count=2, init="hello there", name="q-1")),
    ("soft:  padded init  ", Soft(count=None, init="padded init")),
])
def test_parse_soft_placeholder_forms(body, expected):
    assert parse("{" + body + "}") == [expected]


def test_parse_whitespace_inside_braces_is_ignored():
    assert parse("{ text }{\tmask\n}{  soft*3 }") == [Field("text"), Mask(), Soft(count=3)]


def test_parse_escaped_braces_are_literal_and_merge_with_text():
    assert parse("a {{b}} c {text} }}{{") == [Text("a {b} c "), Field("text"), Text(" }{")]


def test_parse_escaped_brace_right_before_a_placeholder():
    assert parse("{{{text}}}") == [Text("{"), Field("text"), Text("}")]


def test_parse_chinese_template():
    assert parse(ZH) == [Text("请判断以下文本是正面还是负面："), Field("text"), Text(" 这是"), Mask(), Text("面评价。")]


def test_field_names_that_start_with_soft_are_fields_not_soft_tokens():
    assert parse("{software} {soft_label} {soft-x}") == [Field("software"), Text(" "), Field("soft_label"), Text(" "),
                                                          Field("soft-x")]


def test_template_properties_fields_masks_soft():
    t = Template("{a} {b} {a} {soft*2} {mask}")
    assert t.fields == ["a", "b"]
    assert t.n_masks == 1
    assert t.has_soft
    assert not Template("{text} {mask}").has_soft


def test_with_soft_prefix_puts_soft_tokens_first():
    t = Template("Review: {text} {mask}").with_soft_prefix(5)
    assert t.segments[0] == Soft(count=5)
    assert t.segments[1:] == parse("Review: {text} {mask}")


# ---- soft groups ------------------------------------------------------------------------------

def test_soft_groups_rows_are_consecutive_and_init_counts_tokens(tok):
    t = Template("{soft*3} {text} {soft:great movie} {mask}")
    groups = t.soft_groups(tok)
    n_init = len(enc(tok, "great movie"))
    assert n_init >= 2
    assert [(g.start, g.count, g.init) for g in groups] == [(0, 3, None), (3, n_init, "great movie")]
    assert t.n_soft(tok) == 3 + n_init


def test_bare_soft_is_one_token(tok):
    assert Template("{soft}{text}").n_soft(tok) == 1


def test_named_soft_group_shares_rows_between_uses(tok):
    t = Template("{soft#q*4} {text} {soft#q*4} {soft*2} {mask}")
    assert [(g.start, g.count) for g in t.soft_groups(tok)] == [(0, 4), (4, 2)]
    r = Renderer(t, tok, max_length=64, placeholder_id=tok.mask_token_id)
    out = r.render({"text": "good"})
    assert [s for s in out.soft if s >= 0] == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5]
    assert r.n_soft == 6


def test_named_soft_group_takes_count_from_any_use(tok):
    t = Template("{soft#q} {text} {soft#q*4} {mask}")
    assert [(g.start, g.count) for g in t.soft_groups(tok)] == [(0, 4)]
    out = Renderer(t, tok, max_length=64, placeholder_id=0).render({"text": "good"})
    assert [s for s in out.soft if s >= 0] == [0, 1, 2, 3, 0, 1, 2, 3]


def test_named_soft_group_conflicting_counts_is_an_error():
    with pytest.raises(TemplateError) as e:
        parse("{soft#q*4} {text} {soft#q*5}")
    assert e.value.where == "template column 19"
    assert "#q" in str(e.value) and "4" in str(e.value) and "5" in str(e.value)
    assert "same count" in e.value.fix


def test_named_soft_group_conflict_hidden_behind_bare_first_use_is_an_error():
    with pytest.raises(TemplateError) as e:
        parse("{soft#q} {soft#q*4} {soft#q*5}")
    assert e.value.where == "template column 21"


def test_different_soft_group_names_do_not_conflict():
    assert parse("{soft#a*2}{soft#b*3}") == [Soft(2, None, "a"), Soft(3, None, "b")]


# ---------------------------------------------------------------------------------------------
# Parse errors: a TemplateError naming the 1-based column, with a fix
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("template, column, words, fix_words", [
    ("Review: {text", 9, "never closed", "'}'"),
    ("{text} {mask", 8, "never closed", "'{{'"),
    ("a } b", 3, "no '{'", "'}}'"),
    ("{text}}", 7, "no '{'", "'}}'"),
    ("{a {b}", 4, "inside a placeholder", "close"),
    ("{text{mask}}", 6, "inside a placeholder", "close"),
    ("x {} y", 3, "empty placeholder", "{text}"),
    ("{   }", 1, "empty placeholder", "{text}"),
    ("ab {my text}", 4, "not a field name", "letters"),
    ("{1abc}", 1, "not a field name", "letters"),
    ("{a.b}", 1, "not a field name", "letters"),
    ("评价：{文本}", 4, "not a field name", "letters"),
    ("{soft*0}", 1, "0 soft tokens", str(MAX_SOFT_TOKENS)),
    (f"x{{soft*{MAX_SOFT_TOKENS + 1}}}", 2, f"{MAX_SOFT_TOKENS + 1} soft tokens", str(MAX_SOFT_TOKENS)),
    ("{soft*99999999999}", 1, "soft tokens", str(MAX_SOFT_TOKENS)),
    ("{soft:}", 1, "no init words", "words after ':'"),
    ("{soft*3:   }", 1, "no init words", "words after ':'"),
    ("{soft*}", 1, "cannot read soft-token", "{soft*20}"),
    ("{soft#}", 1, "cannot read soft-token", "{soft#name*4}"),
    ("{soft x}", 1, "cannot read soft-token", "{soft*20}"),
    ("{soft*4#q}", 1, "cannot read soft-token", "{soft#name*4}"),
    ("{soft*-1}", 1, "cannot read soft-token", "{soft*20}"),
])
def test_parse_errors_name_column_and_fix(template, column, words, fix_words):
    with pytest.raises(TemplateError) as e:
        parse(template)
    err = e.value
    assert err.where == f"template column {column}"
    assert f"template column {column}:" in str(err)
    assert words in err.what
    assert err.fix and fix_words in err.fix
    assert "Fix:" in str(err)


def test_parse_error_pointer_is_under_the_column():
    with pytest.raises(TemplateError) as e:
        parse("abc } def")
    lines = e.value.what.splitlines()
    assert lines[-2] == "  abc } def"
    assert lines[-1] == "      ^"  # two spaces of indent + 4 columns


def test_soft_count_with_thousands_of_digits_is_a_template_error():
    with pytest.raises(TemplateError) as e:
        parse("{soft*" + "9" * 5000 + "}")
    assert e.value.where == "template column 1"
    assert len(str(e.value).splitlines()[0]) < 200  # the count is shortened in the message


def test_empty_template_is_an_error():
    with pytest.raises(TemplateError) as e:
        parse("")
    assert "{text}" in e.value.fix


def test_non_text_template_is_an_error():
    with pytest.raises(TemplateError):
        Template(42)


def test_template_error_is_a_prompttune_error():
    assert issubclass(TemplateError, PromptTuneError)


# ---------------------------------------------------------------------------------------------
# Template.check
# ---------------------------------------------------------------------------------------------

def test_check_missing_mask_when_needed():
    t = Template("Review: {text}")
    with pytest.raises(TemplateError) as e:
        t.check(needs_mask=True)
    assert "no {mask}" in e.value.what and "{mask}" in e.value.fix
    t.check(needs_mask=False)  # a head fine-tune needs no mask


def test_check_where_is_passed_through():
    with pytest.raises(TemplateError) as e:
        Template("{text}").check(needs_mask=True, where="model.template")
    assert e.value.where == "model.template"


def test_check_two_masks():
    with pytest.raises(TemplateError) as e:
        Template("{text} {mask} and {mask}").check(needs_mask=True)
    assert "2 {mask} slots" in e.value.what
    assert "keep one {mask}" in e.value.fix


def test_check_no_field():
    with pytest.raises(TemplateError) as e:
        Template("Sentiment: {mask}").check(needs_mask=True)
    assert "no input field" in e.value.what and "{text}" in e.value.fix


def test_check_unknown_field_lists_columns_and_points_at_field():
    t = Template("P: {premise} H: {{hypothesis}} { hypothesis } {mask}")
    with pytest.raises(TemplateError) as e:
        t.check(needs_mask=True, columns=["text", "premise", "label"])
    err = e.value
    assert "{hypothesis}" in err.what
    assert "columns: label, premise, text" in err.what
    assert err.where == f"template column {t.text.index('{ hypothesis }') + 1}"
    assert "data.columns" in err.fix and "hypothesis" in err.fix


def test_check_unknown_field_prefix_of_another_field_points_at_itself():
    t = Template("{text2} {text} {mask}")
    with pytest.raises(TemplateError) as e:
        t.check(needs_mask=True, columns=["text2"])
    assert e.value.where == "template column 9"


def test_check_passes_for_good_template():
    Template("P: {premise} H: {hypothesis} {mask}").check(needs_mask=True, columns=["premise", "hypothesis", "label"])


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

def test_special_tokens_around(tok, wtok):
    assert special_tokens_around(tok) == ([], [])
    assert special_tokens_around(wtok) == ([wtok.bos_token_id], [wtok.eos_token_id])


def test_render_tokenises_literal_and_field_run_as_one_string(tok):
    r = renderer(tok, "Review: {text} Sentiment: {mask}")
    out = r.render({"text": "a great movie"})
    expected = enc(tok, "Review: a great movie Sentiment:")
    assert out.ids == expected + [tok.mask_token_id]
    assert out.mask == len(expected)
    assert out.soft == [-1] * len(out.ids)
    assert out.truncated is False


def test_render_moves_space_before_mask_into_label_word(tok):
    r = renderer(tok, "Review: {text} Sentiment: {mask}")
    assert r.space_before_mask is True
    space = enc(tok, " ")
    out = r.render({"text": "good"})
    assert out.ids[out.mask - len(space): out.mask] != space
    # filling the mask with " positive" gives the ids of the sentence written out
    ids, soft, p = fill_mask(out, enc(tok, " positive"))
    assert ids == enc(tok, "Review: good Sentiment: positive")
    assert p == out.mask


def test_render_without_moving_space_ends_the_prompt_on_a_space_token(tok):
    r = renderer(tok, "Review: {text} Sentiment: {mask}", move_space_into_mask=False)
    assert r.space_before_mask is False
    out = r.render({"text": "good"})
    assert out.ids[:out.mask] == enc(tok, "Review: good Sentiment: ")
    assert out.ids[out.mask - 1] == enc(tok, " ")[-1]


def test_render_no_space_before_mask(tok):
    r = renderer(tok, "{text}:{mask}")
    assert r.space_before_mask is False
    assert r.render({"text": "good"}).ids == enc(tok, "good:") + [tok.mask_token_id]


def test_render_chinese_template(tok):
    r = renderer(tok, ZH)
    assert r.space_before_mask is False
    out = r.render({"text": "这部电影非常好看"})
    head = enc(tok, "请判断以下文本是正面还是负面：这部电影非常好看 这是")
    assert out.ids == head + [tok.mask_token_id] + enc(tok, "面评价。")
    assert out.mask == len(head)
    assert not tail_is_empty(Template(ZH).segments)


def test_render_with_wrapping_specials(wtok):
    r = renderer(wtok, "Review: {text} Sentiment: {mask}")
    assert (r.prefix_special, r.suffix_special) == ([wtok.bos_token_id], [wtok.eos_token_id])
    out = r.render({"text": "good"})
    assert out.ids == [wtok.bos_token_id] + enc(wtok, "Review: good Sentiment:") + [wtok.mask_token_id, wtok.eos_token_id]
    assert out.mask == 1 + len(enc(wtok, "Review: good Sentiment:"))
    assert out.soft[0] == -1 and out.soft[-1] == -1


def test_render_soft_rows_in_order_and_minus_one_elsewhere(wtok):
    ph = 3
    r = Renderer(Template("{soft*3} Review: {text} {soft#q*2} Sentiment: {soft#q} {mask}"), wtok,
                 max_length=64, placeholder_id=ph)
    out = r.render({"text": "good movie"})
    assert len(out.ids) == len(out.soft)
    rows = [s for s in out.soft if s >= 0]
    assert rows == [0, 1, 2, 3, 4, 3, 4]
    assert out.soft[1:4] == [0, 1, 2]  # right after <s>
    assert all(out.ids[i] == ph for i, s in enumerate(out.soft) if s >= 0)
    assert out.ids[out.mask] == ph and out.soft[out.mask] == -1
    # text between the soft tokens is tokenised as its own run
    assert out.ids[4:4 + len(enc(wtok, " Review: good movie"))] == enc(wtok, " Review: good movie")
    assert out.ids[-1] == wtok.eos_token_id


def test_render_soft_id_fills_soft_positions_and_placeholder_fills_mask(tok):
    r = Renderer(Template("{soft*2} {text} {mask}"), tok, max_length=64, placeholder_id=tok.mask_token_id,
                 soft_id=tok.pad_token_id)
    out = r.render({"text": "good"})
    assert [out.ids[i] for i, s in enumerate(out.soft) if s >= 0] == [tok.pad_token_id] * 2
    assert out.ids[out.mask] == tok.mask_token_id


def test_render_field_used_twice(tok):
    out = renderer(tok, "{text} or {text}? {mask}").render({"text": "good"})
    assert out.ids == enc(tok, "good or good?") + [tok.mask_token_id]


def test_render_non_string_values_are_stringified(tok):
    assert renderer(tok, "{n} {mask}").render({"n": 42}).ids == enc(tok, "42") + [tok.mask_token_id]


def test_render_missing_field_is_template_error(tok):
    with pytest.raises(TemplateError) as e:
        renderer(tok, "{premise} {hypothesis} {mask}").render({"premise": "x", "label": "y"})
    assert "'hypothesis'" in e.value.what and "label, premise" in e.value.what


def test_render_drop_mask_has_no_mask_slot(tok):
    r = renderer(tok, "Review: {text} Sentiment: {mask}", drop_mask=True)
    out = r.render({"text": "good"})
    assert out.mask is None
    assert out.ids == enc(tok, "Review: good Sentiment:")


def test_fill_mask_shifts_following_soft_rows(tok):
    r = Renderer(Template("{soft*2} {text} {mask} {soft*3}"), tok, max_length=64, placeholder_id=0)
    out = r.render({"text": "good"})
    fill = [11, 12, 13]
    ids, soft, p = fill_mask(out, fill)
    assert p == out.mask
    assert ids[p:p + 3] == fill
    assert soft[p:p + 3] == [-1, -1, -1]
    assert len(ids) == len(soft) == len(out.ids) + 2
    assert ids[:p] == out.ids[:p] and soft[:p] == out.soft[:p]
    assert ids[p + 3:] == out.ids[p + 1:] and soft[p + 3:] == out.soft[p + 1:]
    assert [s for s in soft if s >= 0] == [0, 1, 2, 3, 4]
    assert all(ids[i] == 0 for i, s in enumerate(soft) if s >= 0)


def test_fill_mask_with_empty_fill_removes_placeholder():
    rendered = Rendered(ids=[5, 6, 9, 7], soft=[-1, 0, -1, 1], mask=2)
    assert fill_mask(rendered, []) == ([5, 6, 7], [-1, 0, 1], 2)


@pytest.mark.parametrize("template, expected", [
    ("Review: {text} Sentiment: {mask}", True),
    ("Review: {text} Sentiment: {mask}  \n", True),
    ("Review: {text} Sentiment: {mask}.", False),
    ("{mask} is the answer for {text}", False),
    ("{text} {mask}{soft}", False),
    ("Review: {text}", False),
    (ZH, False),
])
def test_tail_is_empty(template, expected):
    assert tail_is_empty(parse(template)) is expected


# ---------------------------------------------------------------------------------------------
# Truncation
# ---------------------------------------------------------------------------------------------

def test_long_field_is_truncated_and_template_survives(wtok):
    template = "{soft*4} Review: {text} Sentiment: {mask}"
    r = Renderer(Template(template), wtok, max_length=32, placeholder_id=wtok.mask_token_id)
    long = " ".join(["the movie was great and the acting was wonderful"] * 20)
    out = r.render({"text": long}, reserve=3)
    assert out.truncated is True
    assert len(out.ids) <= 32 - 3
    assert len(out.ids) >= 32 - 3 - 3  # not cut far more than needed
    assert [s for s in out.soft if s >= 0] == [0, 1, 2, 3]
    assert out.ids[out.mask] == wtok.mask_token_id
    assert out.ids[0] == wtok.bos_token_id and out.ids[-1] == wtok.eos_token_id
    text = wtok.decode([i for i, s in zip(out.ids, out.soft) if s < 0 and i != wtok.mask_token_id],
                       skip_special_tokens=True)
    assert text.startswith(" Review: the movie was great")
    assert text.endswith(" Sentiment:")


def test_short_field_is_not_truncated(tok):
    out = renderer(tok, "Review: {text} Sentiment: {mask}", max_length=32).render({"text": "good"}, reserve=3)
    assert out.truncated is False


def test_exact_fit_is_not_truncated(tok):
    r = renderer(tok, "Review: {text} Sentiment: {mask}", max_length=64)
    n = len(r.render({"text": "a great movie"}).ids)
    r2 = renderer(tok, "Review: {text} Sentiment: {mask}", max_length=n)
    out = r2.render({"text": "a great movie"})
    assert out.truncated is False and len(out.ids) == n
    out = r2.render({"text": "a great movie"}, reserve=1)
    assert out.truncated is True and len(out.ids) <= n - 1


def test_longest_field_is_cut_first(tok):
    r = renderer(tok, "Premise: {premise} Hypothesis: {hypothesis} Answer: {mask}", max_length=40)
    premise = " ".join(["a man is playing a guitar"] * 20)
    hypothesis = "a person plays music"
    out = r.render({"premise": premise, "hypothesis": hypothesis})
    assert out.truncated and len(out.ids) <= 40
    text = tok.decode(out.ids[:out.mask])
    assert text.startswith("Premise: a man is playing")
    assert text.endswith(" Hypothesis: a person plays music Answer:")


def test_both_fields_cut_when_the_longest_is_not_enough(tok):
    r = renderer(tok, "{a} | {b} {mask}", max_length=8)
    out = r.render({"a": "great movie " * 10, "b": "terrible film " * 8})
    assert out.truncated and len(out.ids) <= 8
    assert out.ids[out.mask] == tok.mask_token_id
    assert "|" in tok.decode(out.ids)


@pytest.mark.parametrize("text", [
    "鬱" * 40,                                  # CJK characters the vocabulary never merged (3 byte tokens each)
    "I liked it " + "😀" * 20 + " really",      # emoji: 4 byte tokens each
    "这部电影非常好看，" * 10 + "鬱鬱",
], ids=["rare-cjk", "emoji", "cjk-then-rare"])
def test_truncation_cuts_at_character_boundaries(tok, text):
    r = renderer(tok, "文本：{text} 这是{mask}面评价。", max_length=20)
    out = r.render({"text": text})
    assert out.truncated and len(out.ids) <= 20
    decoded = tok.decode(out.ids[:out.mask])
    assert "\ufffd" not in decoded
    assert decoded.startswith("文本：") and decoded.endswith(" 这是")
    kept = decoded[len("文本："):-len(" 这是")]
    assert text.startswith(kept)
    assert out.ids[out.mask + 1:] == enc(tok, "面评价。")


def test_truncation_never_removes_template_text_even_for_empty_budget_field(tok):
    fixed = len(enc(tok, "A long instruction about sentiment. Answer:")) + 1
    r = renderer(tok, "A long instruction about sentiment. {text} Answer: {mask}", max_length=fixed + 2)
    out = r.render({"text": "wonderful " * 30})
    assert out.truncated and len(out.ids) <= fixed + 2
    assert out.ids[out.mask] == tok.mask_token_id
    assert tok.decode(out.ids[:out.mask]).startswith("A long instruction about sentiment.")


def test_too_many_soft_tokens_for_max_length_is_an_error(tok):
    with pytest.raises(TemplateError) as e:
        renderer(tok, "{soft*60} {text} {mask}", max_length=32)
    assert "max_length" in e.value.fix


def test_template_text_longer_than_max_length_is_an_error(tok):
    r = renderer(tok, "The movie was great and the acting was wonderful. I loved this film. {text} {mask}", max_length=10)
    with pytest.raises(TemplateError) as e:
        r.render({"text": "good"})
    assert "max_length=10" in e.value.what and "max_length" in e.value.fix


def test_template_without_fields_that_does_not_fit_is_a_template_error(tok):
    r = renderer(tok, "The movie was great and the acting was wonderful. {mask}", max_length=6)
    with pytest.raises(TemplateError):
        r.render({})


def test_reserve_larger_than_free_space_is_an_error(tok):
    r = renderer(tok, "Review: {text} Sentiment: {mask}", max_length=16)
    with pytest.raises(TemplateError):
        r.render({"text": "good"}, reserve=15)


# ---------------------------------------------------------------------------------------------
# Fuzzing
# ---------------------------------------------------------------------------------------------

FUZZ_ATOMS = (list("{}*:#") + list("abcxyzST_-") + list("0123456789") + [" ", " ", "\n"] + list("文本正面评价鬱")
              + ["soft", "mask", "text", "{soft", "{mask}", "{text}", "*4", "#q", "}}", "{{"])


def test_fuzz_parse_and_render_raise_only_template_errors(tok):
    rng = random.Random(0)
    parsed = rendered = 0
    for _ in range(2000):
        t = "".join(rng.choice(FUZZ_ATOMS) for _ in range(rng.randint(0, 16)))
        try:
            segments = parse(t)
        except TemplateError:
            continue
        assert isinstance(segments, list) and segments
        assert all(isinstance(s, (Text, Field, Mask, Soft)) for s in segments)
        parsed += 1
        template = Template(t)
        example = {f: "".join(rng.choice("good bad 好差 鬱😀") for _ in range(rng.randint(0, 30)))
                   for f in template.fields}
        try:
            r = Renderer(template, tok, max_length=rng.choice([8, 24, 64]), placeholder_id=tok.mask_token_id)
            out = r.render(example, reserve=rng.choice([0, 2]))
        except TemplateError:
            continue
        rendered += 1
        assert len(out.ids) == len(out.soft) <= r.max_length
        if template.n_masks:
            assert out.ids[out.mask] == tok.mask_token_id
        assert sorted(set(s for s in out.soft if s >= 0)) == list(range(r.n_soft))
    assert parsed > 200 and rendered > 100  # the fuzz reaches the renderer


def to_text(segments) -> str:
    """Template text for a segment list (the inverse of parse)."""
    out = []
    for s in segments:
        if isinstance(s, Text):
            out.append(s.text.replace("{", "{{").replace("}", "}}"))
        elif isinstance(s, Field):
            out.append("{%s}" % s.name)
        elif isinstance(s, Mask):
            out.append("{mask}")
        else:
            out.append("{soft" + (f"#{s.name}" if s.name else "") + (f"*{s.count}" if s.count is not None else "")
                       + (f":{s.init}" if s.init else "") + "}")
    return "".join(out)


def merge_text(segments):
    out = []
    for s in segments:
        if isinstance(s, Text) and out and isinstance(out[-1], Text):
            out[-1] = Text(out[-1].text + s.text)
        elif not (isinstance(s, Text) and not s.text):
            out.append(s)
    return out


def random_segments(rng: random.Random):
    text_chars = "ab xyz{}*:#文本正面\n"
    group_counts = {"q": rng.choice([None, 2, 5]), "p-1": rng.choice([None, 1, 7])}
    segs = []
    for _ in range(rng.randint(1, 7)):
        kind = rng.choice("TTFMS")
        if kind == "T":
            segs.append(Text("".join(rng.choice(text_chars) for _ in range(rng.randint(0, 6)))))
        elif kind == "F":
            segs.append(Field(rng.choice(["text", "premise", "a_b", "x-1", "software", "Mask", "_"])))
        elif kind == "M":
            segs.append(Mask())
        else:
            name = rng.choice([None, None, "q", "p-1"])
            count = rng.choice([None, 1, 20, MAX_SOFT_TOKENS])
            if name is not None:
                count = group_counts[name] if rng.random() < 0.7 else None
            init = rng.choice([None, "great movie", "a*b:c#d", "情感 分类"])
            segs.append(Soft(count=count, init=init, name=name))
    return segs


def test_round_trip_parse_of_to_text():
    rng = random.Random(0)
    checked = 0
    for _ in range(500):
        segs = merge_text(random_segments(rng))
        if not segs:
            continue
        assert parse(to_text(segs)) == segs, to_text(segs)
        checked += 1
    assert checked > 400


def test_an_audio_option_names_language_and_task_and_is_written_back():
    from prompttune.template import Field, segment_text

    t = Template("{audio: zh   translate }{soft*2} {mask}")
    assert t.segments[0] == Field("audio", "zh translate") and t.fields == ["audio"]
    assert "".join(segment_text(s) for s in t.segments) == "{audio:zh translate}{soft*2} {mask}"
    assert Template("{audio:fr}").segments[0] == Field("audio", "fr")
    assert Template("{audio}").segments[0] == Field("audio")
    with pytest.raises(TemplateError, match="column 7"):  # only the audio field takes an option
        Template("Text: {text:zh}")
