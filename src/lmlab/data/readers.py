"""Streaming corpus readers: documents one at a time, never the whole corpus in memory.

A corpus path is a file, a directory (every supported file under it, recursively, sorted by path) or a glob
(`data/*.jsonl.zst`). Formats by suffix, each optionally compressed (`.gz`, `.zst`):

- `.txt`: one document per non-empty line; in a directory given as the corpus, a `.txt` file is one document per
  line as well (use `iter_documents(..., txt="file")` for one document per file);
- `.jsonl`: one JSON object per line, the text in `text_column`;
- `.json`: a list of records (read whole: use `.jsonl` for large corpora);
- `.csv` / `.tsv`: a header line, then one row per document (quoted fields may span lines);
- `.parquet`: read in record batches of the text column only (pyarrow).

Every bad input is an `LmlabError` naming the file, the byte offset (uncompressed, for compressed files) and the
fix: a corrupt `.gz`/`.zst`, bytes that are not UTF-8, a JSONL line without the text field, an empty corpus.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from lmlab.errors import LmlabError

FORMATS = (".txt", ".jsonl", ".json", ".csv", ".tsv", ".parquet")
COMPRESSIONS = (".gz", ".zst")
TEXT_COLUMN_KEY = "dataset.source.text_column"
PATH_KEY = "dataset.source.path"
csv.field_size_limit(2**31 - 1)


@dataclass(frozen=True)
class Document:
    text: str
    origin: str  # "corpus/a.jsonl line 3" - for messages only


def split_suffix(path: Path) -> tuple[str, str | None]:
    """(format suffix, compression suffix or None): `a.jsonl.zst` -> ('.jsonl', '.zst')."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes[-1] if suffixes and suffixes[-1] in COMPRESSIONS else None
    rest = suffixes[:-1] if compression else suffixes
    return (rest[-1] if rest else ""), compression


def is_supported(path: Path) -> bool:
    return split_suffix(path)[0] in FORMATS


def corpus_files(path: str | Path) -> list[Path]:
    """The files of a corpus (a file, a directory searched recursively, or a glob), in a fixed (sorted) order."""
    text = str(path)
    if any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise LmlabError(f"{PATH_KEY}={text!r}: the glob matches no file. Check the pattern (quote it in a shell).")
    else:
        p = Path(text).expanduser()
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        elif p.is_file():
            return [p]
        else:
            raise LmlabError(
                f"Corpus not found: {p} ({PATH_KEY}). Give an existing file, directory or glob "
                f"(absolute, or relative to the working directory)."
            )
    supported = [f for f in files if is_supported(f)]
    if not supported:
        raise LmlabError(
            f"{PATH_KEY}={text!r} holds no corpus file ({len(files)} files, none of type "
            f"{', '.join(FORMATS)}, optionally {'/'.join(COMPRESSIONS)}-compressed)."
        )
    return supported


class _Counting(io.RawIOBase):
    """A binary stream that counts the bytes read through it (the uncompressed offset in error messages)."""

    def __init__(self, raw: IO[bytes]):
        self.raw, self.pos = raw, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(len(buffer))
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


def _open_binary(path: Path) -> IO[bytes]:
    compression = split_suffix(path)[1]
    if compression == ".gz":
        return gzip.open(path, "rb")
    if compression == ".zst":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True, read_across_frames=True)
    return open(path, "rb")


def _corrupt(path: Path, offset: int, err: Exception) -> LmlabError:
    kind = {".gz": "gzip", ".zst": "zstd"}.get(split_suffix(path)[1] or "", "")
    return LmlabError(
        f"{path}: corrupt or truncated {kind} file at uncompressed byte offset {offset} ({type(err).__name__}: "
        f"{err}). Re-create or re-download it; check it with `{'gzip -t' if kind == 'gzip' else 'zstd -t'} {path}`."
    )


def _not_utf8(path: Path, offset: int, line: int, raw: bytes) -> LmlabError:
    return LmlabError(
        f"{path}: not UTF-8 at byte offset {offset} (line {line}: {raw[:8]!r}...). Re-encode the file as UTF-8, "
        f"e.g. `iconv -f latin1 -t utf-8 {path.name} > utf8_{path.name}` (latin1 = the encoding it was written in)."
    )


_COMPRESSION_ERRORS: tuple[type[BaseException], ...] = (gzip.BadGzipFile, EOFError, zlib.error)


def _compression_errors() -> tuple[type[BaseException], ...]:
    try:
        import zstandard

        return (*_COMPRESSION_ERRORS, zstandard.ZstdError)
    except ImportError:
        return _COMPRESSION_ERRORS


def _lines(path: Path) -> Iterator[tuple[str, int, int]]:
    """(decoded line with its newline, 1-based line number, byte offset of the line): strict UTF-8, BOM dropped."""
    errors = _compression_errors()
    with _open_binary(path) as raw:
        counting = _Counting(raw)
        reader = io.BufferedReader(counting, buffer_size=1 << 20)
        offset, number = 0, 0
        while True:
            try:
                line = reader.readline()
            except errors as err:
                raise _corrupt(path, offset, err) from err
            if not line:
                return
            number += 1
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise _not_utf8(path, offset + err.start, number, line[err.start :]) from err
            if number == 1 and text.startswith("\ufeff"):
                text = text[1:]
            yield text, number, offset
            offset += len(line)


def _read_all(path: Path) -> str:
    errors = _compression_errors()
    with _open_binary(path) as raw:
        try:
            data = raw.read()
        except errors as err:
            raise _corrupt(path, 0, err) from err
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err.start, data.count(b"\n", 0, err.start) + 1, data[err.start :]) from err


def _text_of(record: Any, column: str, path: Path, where: str) -> str | None:
    if not isinstance(record, dict):
        raise LmlabError(
            f"{path}, {where}: a JSON {type(record).__name__}, not an object {{{column!r}: ...}}. "
            f"Write one object per line."
        )
    if column not in record:
        raise LmlabError(
            f"{path}, {where}: no {column!r} field (fields: {sorted(record)[:20]}). Set {TEXT_COLUMN_KEY}=<the "
            f"field that holds the text>, or fix that record."
        )
    value = record[column]
    return None if value is None else value if isinstance(value, str) else str(value)


def _jsonl(path: Path, column: str) -> Iterator[Document]:
    for line, number, offset in _lines(path):
        if not line.strip():
            continue
        where = f"line {number} (byte offset {offset})"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise LmlabError(
                f"{path}, {where}: not valid JSON ({err.msg}, column {err.colno}): {line.strip()[:80]!r}. "
                f"Each line of a .jsonl file must be one JSON object; fix or remove that line."
            ) from err
        text = _text_of(record, column, path, where)
        if text is not None:
            yield Document(text, f"{path} line {number}")


def _json(path: Path, column: str) -> Iterator[Document]:
    try:
        data = json.loads(_read_all(path))
    except json.JSONDecodeError as err:
        raise LmlabError(
            f"{path}, line {err.lineno}: not valid JSON ({err.msg}, column {err.colno}). Fix the file, or write it "
            f"as JSON Lines (.jsonl: one object per line, streamed)."
        ) from err
    if isinstance(data, dict) and isinstance(data.get(column), list):  # column-oriented {"text": [...], ...}
        data = [{column: value} for value in data[column]]
    if not isinstance(data, list):
        raise LmlabError(f'{path}: expected a list of records [{{"{column}": ...}}, ...].')
    for i, record in enumerate(data):
        text = _text_of(record, column, path, f"record {i}")
        if text is not None:
            yield Document(text, f"{path} record {i}")


def _delimited(path: Path, column: str, sep: str) -> Iterator[Document]:
    position = {"line": 0, "offset": 0}

    def lines() -> Iterator[str]:
        for line, number, offset in _lines(path):
            position["line"], position["offset"] = number, offset
            yield line

    reader = csv.reader(lines(), delimiter=sep)
    index: int | None = None
    try:
        for record in reader:
            if not record:
                continue
            if index is None:
                if column not in record:
                    raise LmlabError(
                        f"{path}: no column {column!r} in the header {record[:20]}. Set {TEXT_COLUMN_KEY}=<one of "
                        f"them>."
                    )
                index = record.index(column)
                continue
            if index >= len(record):
                raise LmlabError(
                    f"{path}, line {position['line']} (byte offset {position['offset']}): {len(record)} fields, no "
                    f"{column!r} field. Fix that row (quote a text that holds a {sep!r} or a line break)."
                )
            yield Document(record[index], f"{path} line {position['line']}")
    except csv.Error as err:
        raise LmlabError(
            f"{path}, line {position['line']} (byte offset {position['offset']}): not valid "
            f"{'TSV' if sep == chr(9) else 'CSV'} ({err}). Fix the quoting on that line."
        ) from err


def _parquet(path: Path, column: str, batch_rows: int = 1024) -> Iterator[Document]:
    if split_suffix(path)[1]:
        raise LmlabError(f"{path}: a compressed Parquet file; Parquet compresses internally, decompress it first.")
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise LmlabError(
            f"{path}: not a readable Parquet file ({type(err).__name__}: {err}). Re-write it, e.g. with pandas "
            f"DataFrame.to_parquet."
        ) from err
    names = file.schema_arrow.names
    if column not in names:
        raise LmlabError(f"{path}: no column {column!r} (columns: {names[:20]}). Set {TEXT_COLUMN_KEY}=<one of them>.")
    row = 0
    try:
        for batch in file.iter_batches(batch_size=batch_rows, columns=[column]):
            for value in batch.column(0).to_pylist():
                if value is not None:
                    yield Document(value if isinstance(value, str) else str(value), f"{path} row {row}")
                row += 1
    except OSError as err:
        raise LmlabError(f"{path}: damaged Parquet data after row {row} ({err}). Re-write the file.") from err


def _txt_lines(path: Path) -> Iterator[Document]:
    for line, number, _ in _lines(path):
        text = line.strip()
        if text:
            yield Document(text, f"{path} line {number}")


def _txt_file(path: Path) -> Iterator[Document]:
    text = _read_all(path).strip()
    if text:
        yield Document(text, str(path))


def iter_file(path: Path, text_column: str = "text", txt: str = "line") -> Iterator[Document]:
    """The documents of one corpus file, in file order."""
    kind = split_suffix(path)[0]
    if kind == ".txt":
        yield from (_txt_file(path) if txt == "file" else _txt_lines(path))
    elif kind == ".jsonl":
        yield from _jsonl(path, text_column)
    elif kind == ".json":
        yield from _json(path, text_column)
    elif kind in (".csv", ".tsv"):
        yield from _delimited(path, text_column, "\t" if kind == ".tsv" else ",")
    elif kind == ".parquet":
        yield from _parquet(path, text_column)
    else:
        raise LmlabError(f"Unsupported corpus file type {path.name!r}; use one of {FORMATS} (optionally .gz/.zst).")


def iter_documents(path: str | Path, text_column: str = "text", txt: str = "line") -> Iterator[Document]:
    """Every non-empty document of the corpus at `path`, one at a time; an empty corpus is an error."""
    if txt not in ("line", "file"):
        raise LmlabError(f"txt={txt!r}: 'line' (one document per line) or 'file' (one per file).")
    files = corpus_files(path)
    count = 0
    for file in files:
        for doc in iter_file(file, text_column, txt):
            if doc.text.strip():
                count += 1
                yield doc
    if count == 0:
        raise LmlabError(
            f"The corpus {PATH_KEY}={str(path)!r} has no documents ({len(files)} file(s), all empty or blank). "
            f"Point it at the right files."
        )
