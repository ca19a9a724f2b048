"""Rows from the Hugging Face ``datasets`` world: Parquet and Arrow files, ``save_to_disk`` directories, Hub datasets,
and in-memory ``datasets.Dataset`` / ``DatasetDict`` objects. Everything is read by the ``datasets`` library itself.

Spelling (``data.train`` / ``data.dev`` / ``data.test``, ``prompttune eval --data``, :func:`prompttune.data.load_rows`):

- ``reviews.parquet`` / ``reviews.arrow``: a local Parquet file, or an Arrow file as ``datasets`` writes them;
- ``saved/``: a directory written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``;
- ``hf:OWNER/NAME`` or ``hf:OWNER/NAME:CONFIG``: a Hub dataset (``datasets.load_dataset(OWNER/NAME, CONFIG)``);
- any of these followed by ``@SPLIT`` reads that split: ``hf:nyu-mll/glue:sst2@validation``, ``saved/@test``;
- in YAML, the same as a mapping: ``{hub: nyu-mll/glue, name: sst2, split: validation, revision: main}`` or
  ``{path: saved/, split: test}``.

Without a split, the role picks one from a dataset with splits: train reads ``train``; dev reads ``validation`` (or
``dev``, ``valid``, ``val``); test reads ``test``. A ``ClassLabel`` column gives its names (``label: 0`` becomes
``"negative"`` for SST-2, so the verbalizer is keyed by name; GLUE's ``-1`` of an unlabelled test split is a missing
label). Other values become text as in JSON files (numbers as written, lists and objects as JSON). ``columns`` and
``label_column`` map columns as for files.

Rows stay in Arrow (memory-mapped) until read: :class:`DatasetRows` makes a row's dict only when it is read, and the
few-shot sampler reads only the label column, so drawing 32 shots from a million-row Parquet file makes 32 dicts.
The Hub is reached only for ``hf:`` sources, and ``HF_HUB_OFFLINE=1`` / ``HF_DATASETS_OFFLINE=1`` are respected (only
datasets already in the local cache load); an unreachable Hub is a :class:`~prompttune.errors.DataError` with the fix.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import DataError
from .files import Row, resolve_label_column, shape_row, value_text

HUB_PREFIX = "hf:"
DATASET_SUFFIXES = (".parquet", ".arrow")
# the splits each role reads from a dataset with splits, in order of preference
ROLE_SPLITS = {"train": ("train",), "dev": ("validation", "dev", "valid", "val"), "test": ("test",)}
SAVED_MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk writes (a DatasetDict / a Dataset)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
OFFLINE_FIX = ("connect to the Hugging Face Hub (or point HF_ENDPOINT at a mirror); or, where you have internet, run "
               "`datasets.load_dataset(...).save_to_disk(DIR)` and give DIR here. With HF_HUB_OFFLINE=1 or "
               "HF_DATASETS_OFFLINE=1 only datasets already in the local cache load")


@dataclass(frozen=True)
class DatasetSource:
    """A dataset of the ``datasets`` world: a Hub id (``hub``) or a local file / ``save_to_disk`` directory (``path``)."""

    hub: str | None = None
    path: str | None = None
    name: str | None = None      # the Hub dataset's configuration ("sst2" of glue)
    split: str | None = None     # None: the role's split (ROLE_SPLITS)
    revision: str | None = None  # Hub only: a branch, tag or commit

    def __str__(self) -> str:
        text = f"{HUB_PREFIX}{self.hub}{':' + self.name if self.name else ''}" if self.hub else str(self.path)
        return text + (f"@{self.split}" if self.split else "") + (f" (revision {self.revision})" if self.revision else "")


def is_dataset_path(path: Path) -> bool:
    """A local ``.parquet`` / ``.arrow`` file, or a directory written by ``save_to_disk``."""
    try:
        if path.is_file():
            return path.suffix.lower() in DATASET_SUFFIXES
        return path.is_dir() and any((path / marker).is_file() for marker in SAVED_MARKERS)
    except (OSError, ValueError):
        return False


def parse_source(spec) -> DatasetSource | None:
    """The ``datasets`` source a data spec names, or None when it names something else (a CSV/JSON file, a built-in)."""
    if isinstance(spec, DatasetSource):
        return spec
    if hasattr(spec, "model_dump"):  # the config's mapping form (prompttune.config.DatasetSpec)
        spec = spec.model_dump()
    if isinstance(spec, Mapping):
        known = {f.name for f in fields(DatasetSource)}
        unknown = sorted(map(str, set(spec) - known))
        if unknown:
            raise DataError(f"unknown key(s) {unknown} in a dataset mapping", where=str(dict(spec))[:200],
                            fix=f"use only {sorted(known)}, e.g. {{hub: nyu-mll/glue, name: sst2, split: validation}}")
        bad = [k for k, v in spec.items() if v is not None and not isinstance(v, str)]
        if bad:
            raise DataError(f"the dataset mapping's {bad[0]!r} must be a string", where=str(dict(spec))[:200],
                            fix="write e.g. {hub: nyu-mll/glue, name: sst2, split: validation}")
        source = DatasetSource(**spec)
        if (source.hub is None) == (source.path is None):
            raise DataError("a dataset mapping needs exactly one of 'hub' (a Hub dataset id) and 'path' (a local file "
                            "or save_to_disk directory)", where=str(dict(spec))[:200],
                            fix="write {hub: stanfordnlp/sst2, split: train} or {path: data/saved, split: test}")
        if source.hub is not None:
            check_hub_id(source.hub, str(source))
        elif source.revision is not None:
            raise DataError("'revision' applies to Hub datasets only", where=str(source), fix="drop revision, or use hub:")
        return source
    text = os.fspath(spec)
    if text.startswith(HUB_PREFIX):
        body, _, split = text[len(HUB_PREFIX):].partition("@")
        repo, _, name = body.partition(":")
        check_hub_id(repo, text)
        if "@" in split or ":" in name:
            raise DataError("a Hub dataset is written hf:OWNER/NAME[:CONFIG][@SPLIT]", where=text,
                            fix="e.g. hf:nyu-mll/glue:sst2@validation")
        return DatasetSource(hub=repo, name=name or None, split=split or None)
    if is_dataset_path(Path(os.path.expanduser(text))):
        return DatasetSource(path=text)
    head, sep, split = text.rpartition("@")
    if sep and head and split and is_dataset_path(Path(os.path.expanduser(head))):
        return DatasetSource(path=head, split=split)
    return None


def check_hub_id(repo: str, where: str) -> None:
    if not _HUB_ID.fullmatch(repo or "") or ".." in repo:
        raise DataError(f"{repo!r} is not a Hub dataset id", where=where,
                        fix="write hf:OWNER/NAME (e.g. hf:stanfordnlp/sst2), with :CONFIG and @SPLIT if needed")


def _datasets():
    try:
        import datasets
    except ImportError:  # pragma: no cover - a declared dependency
        raise DataError("the `datasets` library is not installed", where="prompttune.data",
                        fix="pip install datasets") from None
    return datasets


def is_dataset(obj) -> bool:
    """A ``datasets.Dataset`` (never imports ``datasets``: an object of it exists only once it is imported)."""
    mod = sys.modules.get("datasets")
    return mod is not None and isinstance(obj, mod.Dataset)


def is_dataset_dict(obj) -> bool:
    mod = sys.modules.get("datasets")
    return mod is not None and isinstance(obj, mod.DatasetDict)


def pick_split(splits: Mapping, role: str, split: str | None, where: str):
    """The split ``split`` of a DatasetDict, or the one the role reads (``ROLE_SPLITS``)."""
    names = list(splits)
    if split is not None:
        if split not in splits:
            raise DataError(f"there is no split {split!r}; the splits are {names}", where=where,
                            fix=f"name one of them, e.g. {where.split('@')[0]}@{names[0]}" if names else "check the dataset")
        return splits[split]
    for name in ROLE_SPLITS.get(role, (role,)):
        if name in splits:
            return splits[name]
    raise DataError(f"the dataset has no {' / '.join(ROLE_SPLITS.get(role, (role,)))} split for {role} (its splits are "
                    f"{names})", where=where, fix=f"name the split to read, e.g. {where.split('@')[0]}@{names[0]}" if names
                    else "check the dataset")


def load_dataset(source: DatasetSource, role: str):
    """The ``datasets.Dataset`` a source names, for a role (``train`` / ``dev`` / ``test``)."""
    ds = _datasets()
    where = str(source)
    if source.hub is not None:
        try:
            obj = ds.load_dataset(source.hub, source.name, split=source.split, revision=source.revision)
        except ConnectionError as e:
            raise DataError(f"could not reach the Hugging Face Hub for dataset {source.hub!r} ({e})", where=where,
                            fix=OFFLINE_FIX) from None
        except FileNotFoundError as e:
            raise DataError(f"the Hub has no dataset {source.hub!r} that this machine can read ({e})", where=where,
                            fix="check the id (and your token for a gated or private dataset: `hf auth login`)") from None
        except ValueError as e:  # an unknown config or split: datasets lists the valid ones
            raise DataError(f"cannot load dataset {source.hub!r}: {e}", where=where,
                            fix="pick a configuration (hf:OWNER/NAME:CONFIG) and split (@SPLIT) the message names") from None
    else:
        path = Path(os.path.expanduser(source.path))
        try:
            if path.is_file() and path.suffix.lower() == ".parquet":
                obj = ds.Dataset.from_parquet(str(path))
            elif path.is_file():
                obj = ds.Dataset.from_file(str(path))
            else:
                obj = ds.load_from_disk(str(path))
        except Exception as e:  # pyarrow and datasets raise many types for a bad file; all mean the same to a user
            kind = "Parquet" if path.suffix.lower() == ".parquet" else "Arrow" if path.is_file() else "save_to_disk"
            raise DataError(f"cannot read it as a {kind} dataset ({type(e).__name__}: {str(e)[:300]})", where=where,
                            fix="check the file; write Parquet with `Dataset.to_parquet` or pandas, Arrow and "
                                "directories with `Dataset.save_to_disk`") from None
    if isinstance(obj, ds.DatasetDict):
        return pick_split(obj, role, source.split, where), where
    if source.split is not None and source.hub is None:
        raise DataError(f"the dataset has no splits, so @{source.split} cannot be read", where=where,
                        fix=f"give {source.path} without @{source.split}")
    return obj, where


class DatasetRows(Sequence):
    """The rows of a ``datasets.Dataset``, each made when it is read (the Arrow table stays memory-mapped).

    ``labels()`` reads the label column alone, which is all the few-shot sampler needs; slicing or iterating makes
    the rows read. Columns are mapped and labels named exactly as for files (``prompttune.data``)."""

    def __init__(self, dataset, where: str, *, columns: Mapping[str, str] | None = None, label_column: str = "label",
                 require_label: bool = True):
        self.dataset, self.where, self.require_label = dataset, where, require_label
        self.mapping, self.label_column = resolve_label_column(columns, label_column)
        present = list(dataset.column_names)
        shown = ", ".join(map(repr, present)) or "none"
        for fieldname, column in self.mapping.items():
            if column not in present:
                raise DataError(f"there is no column {column!r} (mapped to field {fieldname!r}); the columns are {shown}",
                                where=where, fix=f"map {fieldname!r} to one of the columns (data.columns)")
        if require_label and self.label_column not in present:
            raise DataError(f"there is no label column {self.label_column!r}; the columns are {shown}", where=where,
                            fix="set data.label_column to the column that holds the labels")
        if len(dataset) == 0:
            raise DataError("the dataset has no rows", where=where, fix="give a dataset (or split) with rows")
        class_label = _datasets().ClassLabel
        self.class_names = {c: list(f.names) for c, f in dataset.features.items() if isinstance(f, class_label)}

    @classmethod
    def open(cls, source: DatasetSource, role: str, **kw) -> "DatasetRows":
        return cls(*load_dataset(source, role), **kw)

    def _text(self, column: str, value) -> str | None:
        names = self.class_names.get(column)
        if names is not None and isinstance(value, int):
            value = names[value] if 0 <= value < len(names) else None  # -1: GLUE's unlabelled test rows
        return value_text(value)

    def _row(self, raw: Mapping, index: int) -> Row:
        values = {k: s for k, v in raw.items() if (s := self._text(k, v)) is not None}
        return shape_row(values, self.mapping, self.label_column, self.require_label, f"{self.where}, row {index + 1}")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        i = index + n if index < 0 else index
        if not 0 <= i < n:
            raise IndexError(index)
        return self._row(self.dataset[i], i)

    def __iter__(self):
        i = 0
        for batch in self.dataset.iter(batch_size=1000):
            keys = list(batch)
            for j in range(len(batch[keys[0]]) if keys else 0):
                yield self._row({k: batch[k][j] for k in keys}, i)
                i += 1

    def labels(self) -> list[str | None]:
        """Every row's label (stripped; None where missing), read from the label column alone."""
        if self.label_column not in self.dataset.column_names:
            return [None] * len(self)
        import pyarrow.compute as pc

        column = self.dataset.select_columns([self.label_column]).with_format("arrow")[self.label_column]
        out: list[str | None] = []
        # dictionary-encoded, so a million rows of two labels are a million references to two strings
        for chunk in pc.dictionary_encode(column).chunks:
            names = []
            for value in chunk.dictionary.to_pylist():
                text = self._text(self.label_column, value)
                names.append((text.strip() or None) if text is not None else None)
            names.append(None)  # a null row
            codes = chunk.indices.fill_null(len(names) - 1).to_numpy(zero_copy_only=False)
            out.extend(names[i] for i in codes.tolist())
        return out


def as_rows(obj, *, role: str = "train", columns: Mapping[str, str] | None = None, label_column: str = "label",
            require_label: bool = True):
    """Rows of a ``datasets.Dataset`` (or the role's split of a ``DatasetDict``) as dicts; anything else unchanged.
    This is how the Python API takes a Dataset wherever it takes rows."""
    if is_dataset_dict(obj):
        obj = pick_split(obj, role, None, "the DatasetDict")
    if is_dataset(obj):
        return list(DatasetRows(obj, f"the Dataset ({len(obj)} rows)", columns=columns, label_column=label_column,
                                require_label=require_label))
    return obj
