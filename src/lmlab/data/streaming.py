"""`dataset.split_rule`: which split a `TextDataModule` uses, and the `hash` path (streamed, sharded, memory-mapped).

- `stratified`: today's `splits.split_examples` (the whole source in memory), unchanged.
- `hash`: a `files` source with one `path` (file, directory or glob) is never held in memory: documents are read
  one at a time (`lmlab.data.readers`), split by `lmlab.data.hashsplit`, exact-deduped, tokenized into token shards
  (`lmlab.data.shards`) that the task's blocks read through memory maps.
- `auto` (the default): for a task that reads no labels (causal and masked LM), `hash` for an unlabelled `files`
  source with one `path` (plain text, `label_column: null`, or no label column in the data), else `stratified`;
  for a task that reads labels (classification, multitask), `stratified`. BBC, labelled files and split
  files keep today's split bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from lmlab.data.hashsplit import HashSet, check_fractions, content_hash, unit
from lmlab.data.readers import corpus_files, iter_documents, split_suffix
from lmlab.data.sources import Example
from lmlab.errors import LmlabError

log = logging.getLogger(__name__)

SPLIT_RULES = ("auto", "stratified", "hash")


def _files_options(source: Any) -> dict[str, Any] | None:
    """The keyword arguments of a `dataset.source` that is `lmlab.data.sources.files` (a partial), else None."""
    func = getattr(source, "func", None)
    if getattr(func, "__module__", None) == "lmlab.data.sources" and getattr(func, "__name__", None) == "files":
        return dict(getattr(source, "keywords", {}) or {})
    return None


def _has_column(path: Path, column: str) -> bool:
    """Whether the first record (or header) of the first corpus file has `column` (plain text has none)."""
    first = corpus_files(path)[0]
    kind = split_suffix(first)[0]
    if kind == ".txt":
        return False
    if kind == ".parquet":
        import pyarrow.parquet as pq

        return column in pq.ParquetFile(first).schema_arrow.names
    if kind == ".json":
        return True  # read whole by the stratified path; its own messages apply
    from lmlab.data.readers import _lines

    for line, _, _ in _lines(first):
        if not line.strip():
            continue
        if kind == ".jsonl":
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                return True  # let the reader that is used name the bad line
            return isinstance(record, dict) and column in record
        sep = "\t" if kind == ".tsv" else ","
        import csv

        return column in next(csv.reader([line], delimiter=sep))
    return False


def resolve_split_rule(rule: str, source: Any, labelled: bool | None = None) -> str:
    """`stratified` or `hash` for `dataset.split_rule=rule` on `source`. `labelled`: whether the task reads labels
    (the task says so before the data is loaded; None: unknown, decided by the data alone). A task that reads labels
    (classification, multitask) always gets `stratified` under `auto`: the issue's rule is hash for LM tasks only, and
    a bad or unlabelled file then gets the labelled readers' own messages."""
    if rule not in SPLIT_RULES:
        raise LmlabError(f"dataset.split_rule={rule!r} is not one of {list(SPLIT_RULES)}.")
    options = _files_options(source)
    single = options is not None and options.get("path") is not None
    if rule == "hash" and not single:
        raise LmlabError(
            "dataset.split_rule=hash needs dataset=files with one dataset.source.path (a file, directory or glob); "
            "use dataset.split_rule=stratified for this source."
        )
    if rule != "auto":
        return rule
    if not single or labelled:
        return "stratified"
    assert options is not None
    label = options.get("label_column", "label")
    if label is None:
        return "hash"
    return "stratified" if _has_column(Path(str(options["path"])), str(label)) else "hash"


class HashSplit(Sequence[Example]):
    """One split of a `hash`-split corpus as examples, streamed from the files on every iteration (exact duplicates
    dropped as the shards drop them). For what reads `datamodule.splits` (a trained BPE reads the train texts)."""

    def __init__(self, split: str, corpus: HashedCorpus):
        self.split, self.corpus = split, corpus

    def __iter__(self) -> Iterator[Example]:
        for split, doc_id, text in self.corpus.kept():
            if split == self.split:
                yield Example(id=doc_id, text=text, label=None, origin=doc_id)

    def hashes(self) -> list[str]:
        """This split's sorted example hashes (lineage.example_hash), from one pass shared by the three splits."""
        return self.corpus.example_hashes()[self.split]

    count: int | None = None  # known once the shards exist (their manifest); else one streamed pass

    def __len__(self) -> int:
        if self.count is None:
            self.count = sum(1 for _ in self)
        return self.count

    def __getitem__(self, index: Any) -> Any:
        raise TypeError("a hash split is streamed: iterate it")


class HashedCorpus:
    """The `hash` path of a `TextDataModule`: lazy splits at load, token shards at setup."""

    def __init__(
        self,
        source: Any,
        *,
        split_seed: int,
        fractions: Mapping[str, float],
        dedupe: str,
        max_samples: Mapping[str, int | None],
        num_proc: int,
        token_budgets: Mapping[str, int | None] | None = None,
        near_duplicate_threshold: float = 0.5,
    ):
        options = _files_options(source) or {}
        self.path = str(options["path"])
        self.text_column = str(options.get("text_column") or "text")
        if any(v is not None for v in (max_samples or {}).values()):
            raise LmlabError(
                f"dataset.max_samples={dict(max_samples)} is not supported with dataset.split_rule=hash (the corpus "
                f"is streamed); cap the corpus itself, or use dataset.split_rule=stratified."
            )
        self.split_seed, self.fractions, self.num_proc = split_seed, dict(fractions), max(1, int(num_proc))
        self.dedupe = dedupe != "none"
        # dataset.dedupe=near: val/test near-copies of an earlier split are found by streaming (near_duplicates)
        self.near_threshold = float(near_duplicate_threshold) if dedupe == "near" else None
        self.val, self.test = check_fractions(fractions)
        from lmlab.data.shards import corpus_fingerprint

        self.corpus = corpus_fingerprint(self.path)
        self.keep: dict[str, Any] = {}  # split -> bool mask over its documents (kept for scoring), set at setup
        self._hashes: dict[str, list[str]] | None = None
        settings: list[Any] = [self.corpus, self.text_column, split_seed, self.val, self.test, dedupe]
        budgets = {k: v for k, v in (token_budgets or {}).items() if v is not None}
        if budgets:  # a budget changes the val/test sets (so the fingerprint), not the shards
            settings.append(budgets)
        if self.near_threshold is not None:
            settings.append({"near_duplicate_threshold": self.near_threshold})
        blob = json.dumps(settings)
        self.fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]

    def assigned(self) -> Iterator[tuple[str, str, str]]:
        """(split, document id, text) of every document kept, in corpus order."""
        seen = HashSet()
        for doc in iter_documents(self.path, self.text_column):
            if self.dedupe and not seen.add([content_hash(doc.text)])[0]:
                continue
            u = unit(doc.text, self.split_seed)
            yield ("val" if u < self.val else "test" if u < self.val + self.test else "train"), doc.origin, doc.text

    def train_bytes(self) -> int:
        """An estimate of the train split's text bytes without reading it: the files' sizes times the train
        fraction (compressed files count their compressed size)."""
        return int(sum(int(f[1]) for f in self.corpus["files"]) * (1 - self.val - self.test))

    def kept(self) -> Iterator[tuple[str, str, str]]:
        """`assigned()` less the val/test documents the run does not score (near-copies, outside a token budget):
        what the shards' splits hold as read (`self.keep`, set by the datamodule from the shards; None = all)."""
        index = {"train": 0, "val": 0, "test": 0}
        for split, doc_id, text in self.assigned():
            i, index[split] = index[split], index[split] + 1
            keep = self.keep.get(split)
            if keep is None or keep[i]:
                yield split, doc_id, text

    def example_hashes(self) -> dict[str, list[str]]:
        if self._hashes is None:
            from lmlab.rundir.lineage import example_hash

            hashes: dict[str, list[str]] = {"train": [], "val": [], "test": []}
            for split, _, text in self.kept():
                hashes[split].append(example_hash(text))
            self._hashes = {split: sorted(h) for split, h in hashes.items()}
        return self._hashes

    def splits(self) -> dict[str, HashSplit]:
        return {split: HashSplit(split, self) for split in ("train", "val", "test")}

    def shards(self, tokenizer: Any, encoding: Any, max_length: int, root: Path) -> Any:
        from lmlab.data.cache import tokenizer_fingerprint
        from lmlab.data.shards import prepare

        def tokenize(texts: list[str]) -> list:
            examples = [Example(id="", text=t, label=None) for t in texts]
            return encoding.tokenize(tokenizer, examples, max_length)["input_ids"]

        vocab = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
        identity = {"tokenizer": tokenizer_fingerprint(tokenizer), "options": encoding.cache_options()}
        shards = prepare(
            self.path,
            root,
            tokenize=tokenize,
            vocab_size=vocab,
            identity=identity,
            split_seed=self.split_seed,
            fractions=self.fractions,
            dedupe=self.dedupe,
            text_column=self.text_column,
            num_proc=self.num_proc,
        )
        self.near_copies = self._near_copies(shards.directory) if self.near_threshold is not None else None
        m = shards.manifest
        log.info(
            "Token shards %s: %s documents, %s tokens (%s), %d exact duplicates removed",
            shards.directory,
            m["docs"],
            m["tokens"],
            m["dtype"],
            m["duplicates_removed"],
        )
        return shards

    def _near_copies(self, directory: Path) -> dict[tuple[str, str], list[int]]:
        """`find_near_duplicates`' pairs for the shards' val/test documents (indices in shard order), computed by
        streaming and kept beside the shards (`near-<threshold>.json`), so the next run reads them."""
        from lmlab.data.near_duplicates import find_near_duplicates_streamed
        from lmlab.rundir import write_json

        assert self.near_threshold is not None
        path = directory / f"near-{self.near_threshold:g}.json"
        if path.is_file():
            raw = json.loads(path.read_text())
            return {tuple(key.split("&")): value for key, value in raw.items()}  # type: ignore[misc]
        start = time.perf_counter()
        found = find_near_duplicates_streamed(
            lambda: ((split, text) for split, _, text in self.assigned()),
            self.near_threshold,
            self.num_proc,
            train_bytes=self.train_bytes(),
        )
        write_json(path, {f"{a}&{b}": indices for (a, b), indices in found.items()})
        log.info(
            "Near-copies (dataset.dedupe=near, threshold %g) found by streaming in %.1f s: %s",
            self.near_threshold,
            time.perf_counter() - start,
            {f"{a}&{b}": len(v) for (a, b), v in found.items()},
        )
        return found
