"""Large-corpus data path (issue 22), on tiny corpora: streaming readers and their bad-input messages."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pytest

from lmlab.data.readers import corpus_files, iter_documents
from lmlab.errors import LmlabError

DOCS = ["first document", "second one, with a comma", 'third "quoted"\nand two lines', "fourth ünïcode €"]


def _write(path: Path, kind: str, docs: list[str] = DOCS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "jsonl":
        path.write_text("".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(docs)))
    elif kind == "json":
        path.write_text(json.dumps([{"text": d} for d in docs]))
    elif kind in ("csv", "tsv"):
        with open(path, "w", newline="") as f:
            writer = csv.writer(f, delimiter="," if kind == "csv" else "\t")
            writer.writerow(["id", "text"])
            writer.writerows([i, d] for i, d in enumerate(docs))
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"id": list(range(len(docs))), "text": docs}), path, row_group_size=2)
    return path


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "tsv", "parquet"])
def test_reader_formats_give_the_documents_in_order(tmp_path: Path, kind: str) -> None:
    path = _write(tmp_path / f"c.{kind}", kind)
    assert [d.text for d in iter_documents(path)] == DOCS


def test_reader_txt_lines_files_directories_globs_and_compression(tmp_path: Path) -> None:
    import zstandard

    (tmp_path / "a.txt").write_text("one\n\n  two  \n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "three"}) + "\n")
    (tmp_path / "c.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(b"four\nfive\n"))
    (tmp_path / "notes.md").write_text("ignored")
    assert [d.text for d in iter_documents(tmp_path)] == ["one", "two", "three", "four", "five"]
    assert [d.text for d in iter_documents(tmp_path / "*.txt*")] == ["one", "two", "four", "five"]
    assert [d.text for d in iter_documents(tmp_path / "a.txt", txt="file")] == ["one\n\n  two"]
    assert [p.name for p in corpus_files(tmp_path)] == ["a.txt", "b.jsonl.gz", "c.txt.zst"]


def test_reader_streams_one_document_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_text("doc\n" * 10 + "\xff")  # valid UTF-8 ("\xff" is ÿ): the generator must not read ahead
    docs = iter_documents(path)
    assert next(docs).text == "doc"


def test_bad_corrupt_gzip_names_file_and_offset(tmp_path: Path) -> None:
    blob = gzip.compress(("hello world\n" * 2000).encode())
    path = tmp_path / "c.txt.gz"
    path.write_bytes(blob[: len(blob) // 2])  # truncated
    with pytest.raises(LmlabError, match=r"c\.txt\.gz: corrupt or truncated gzip file at uncompressed byte offset"):
        list(iter_documents(path))
    path.write_bytes(b"not gzip at all")
    with pytest.raises(LmlabError, match=r"corrupt or truncated gzip.*gzip -t"):
        list(iter_documents(path))


def test_bad_corrupt_zstd(tmp_path: Path) -> None:
    import zstandard

    blob = zstandard.ZstdCompressor().compress(("hello world\n" * 2000).encode())
    path = tmp_path / "c.jsonl.zst"
    path.write_bytes(blob[:-8] + b"\x00" * 8)
    with pytest.raises(LmlabError, match=r"c\.jsonl\.zst: corrupt or truncated zstd file.*zstd -t"):
        list(iter_documents(path, text_column="x"))


def test_bad_invalid_utf8_names_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(b"good line\nbad \xff here\n")
    with pytest.raises(LmlabError, match=r"c\.txt: not UTF-8 at byte offset 14 \(line 2.*iconv"):
        list(iter_documents(path))
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_bytes(b'{"text": "ok"}\n{"text": "\xe9t\xe9"}\n')
    with pytest.raises(LmlabError, match=r"not UTF-8 at byte offset 25 \(line 2"):
        list(iter_documents(jsonl))


def test_bad_empty_corpus(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("\n  \n")
    (tmp_path / "b.jsonl").write_text("")
    with pytest.raises(LmlabError, match=r"has no documents \(2 file\(s\), all empty or blank\)"):
        list(iter_documents(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LmlabError, match=r"holds no corpus file"):
        list(iter_documents(tmp_path / "empty"))
    with pytest.raises(LmlabError, match=r"Corpus not found: .*missing\.txt \(dataset\.source\.path\)"):
        list(iter_documents(tmp_path / "missing.txt"))
    with pytest.raises(LmlabError, match=r"the glob matches no file"):
        list(iter_documents(tmp_path / "*.parquet"))


def test_bad_missing_text_field_names_the_override(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(
        LmlabError, match=r"c\.jsonl, line 2 \(byte offset 15\): no 'text' field \(fields: \['body'\]\)"
    ):
        list(iter_documents(path))
    with pytest.raises(LmlabError, match=r"dataset\.source\.text_column=<the field"):
        list(iter_documents(path))
    for kind in ("csv", "parquet"):
        with pytest.raises(LmlabError, match=r"no column 'body'.*dataset\.source\.text_column"):
            list(iter_documents(_write(tmp_path / f"d.{kind}", kind), text_column="body"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(LmlabError, match=r"bad\.jsonl, line 2 \(byte offset 15\): not valid JSON"):
        list(iter_documents(bad))
