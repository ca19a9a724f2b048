"""Reading user data files: ``.csv``, ``.tsv``, ``.jsonl`` and ``.json`` (JSON lines or one array of objects).

See :mod:`prompttune.data` for the formats, the ``columns`` / ``label_column`` mapping and the errors raised.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from pathlib import Path
from typing import Mapping

from ..errors import ConfigError, DataError, check_input_texts

Row = dict[str, str]  # every value a str; the label, if any, under "label"

FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")


def resolve_label_column(columns: Mapping[str, str] | None, label_column: str) -> tuple[dict[str, str], str]:
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


def shape_row(raw: Mapping[str, str], mapping: Mapping[str, str], label_column: str,
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
        rows.append(shape_row(dict(zip(header, record)), mapping, label_column, require_label,
                           f"{name}, line {start}"))
    if header is None:
        raise DataError("the file is empty", where=name, fix="give a file with a header and data rows")
    if not rows:
        raise DataError("the file has a header but no data rows", where=name, fix="add data rows")
    return rows


def value_text(value: object) -> str | None:
    """A JSON or Arrow value as the row's str (None stays None: a missing value); lists and objects as JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False, default=str)  # Arrow dates, bytes, ...: their text


def _json_row(obj: object, where: str, mapping: Mapping[str, str], label_column: str,
              require_label: bool, hint: str) -> Row:
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__ if obj is not None else 'null'}",
                        where=where, fix=hint)
    raw = {k: s for k, v in obj.items() if (s := value_text(v)) is not None}
    check_input_texts(raw, where, error=DataError)  # a JSON \ud800 escape decodes to a lone surrogate
    return shape_row(raw, mapping, label_column, require_label, where)


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


def check_usable_path(file: Path, name: str) -> None:
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
    mapping, label_column = resolve_label_column(columns, label_column)
    suffix = file.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise DataError(f"unsupported file type {suffix or '(no extension)'!r}", where=name,
                        fix=f"save the data as one of {', '.join(FILE_SUFFIXES)} and name it so")
    check_usable_path(file, name)
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
