"""Sources, splits, dedupe and label checks — the data path before any model is involved."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from lmlab.data.near_duplicates import find_near_duplicates, shingles
from lmlab.data.sources import SPLITS, Example, bbc_news, files
from lmlab.data.splits import (
    build_splits,
    check_threshold,
    dedupe_mode,
    duplicate_report,
    fingerprint,
    label_names,
    stratified_split,
)
from lmlab.errors import LmlabError

FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


@pytest.fixture(scope="module")
def bbc() -> list[Example]:
    return bbc_news()


def test_bbc_news_is_complete(bbc: list[Example]) -> None:
    assert len(bbc) == 2225
    assert Counter(ex.label for ex in bbc) == {
        "business": 510,
        "entertainment": 386,
        "politics": 417,
        "sports": 511,
        "tech": 401,
    }
    assert len({ex.id for ex in bbc}) == 2225
    assert all(ex.text for ex in bbc)


def test_bbc_duplicates_are_reported_and_removed(bbc: list[Example]) -> None:
    splits, dupes = build_splits(bbc, fractions=FRACTIONS, split_seed=0, dedupe=True)  # true = exact
    assert dupes["in_pool"] == 98
    # Without dedupe, a split leaks duplicate texts across train and test.
    assert dupes["train&test"] > 0
    assert sum(len(s) for s in splits.values()) == 2225 - 98
    report = duplicate_report(splits)
    assert all(count == 0 for count in report.values()), report

    kept, _ = build_splits(bbc, fractions=FRACTIONS, split_seed=0, dedupe=False)
    assert sum(len(s) for s in kept.values()) == 2225
    assert duplicate_report(kept)["train&test"] == dupes["train&test"]


def test_split_is_stratified_deterministic_and_seeded(bbc: list[Example]) -> None:
    a = stratified_split(bbc, FRACTIONS, seed=0)
    b = stratified_split(list(reversed(bbc)), FRACTIONS, seed=0)  # input order does not matter
    c = stratified_split(bbc, FRACTIONS, seed=1)
    assert [ex.id for ex in a["test"]] == [ex.id for ex in b["test"]]
    assert {ex.id for ex in a["test"]} != {ex.id for ex in c["test"]}
    for label, total in Counter(ex.label for ex in bbc).items():
        assert Counter(ex.label for ex in a["test"])[label] == round(total * 0.1)
    ids = [ex.id for split in a.values() for ex in split]
    assert len(ids) == len(set(ids)) == len(bbc)


def test_fingerprint_changes_with_data(bbc: list[Example]) -> None:
    splits = stratified_split(bbc, FRACTIONS, seed=0)
    assert fingerprint(splits) == fingerprint(stratified_split(bbc, FRACTIONS, seed=0))
    assert fingerprint(splits) != fingerprint(stratified_split(bbc, FRACTIONS, seed=1))


def test_one_vs_rest_makes_a_binary_task(bbc: list[Example]) -> None:
    splits, _ = build_splits(bbc, fractions=FRACTIONS, split_seed=0, one_vs_rest="sports")
    assert label_names(splits) == ["not_sports", "sports"]
    with pytest.raises(LmlabError, match="'sport' is not a label.*sports"):
        build_splits(bbc, fractions=FRACTIONS, split_seed=0, one_vs_rest="sport")


def test_unseen_label_in_test_is_an_error() -> None:
    make = lambda label, i: Example(id=f"{label}{i}", text=f"{label} text {i}", label=label)  # noqa: E731
    splits = {
        "train": [make("a", i) for i in range(3)],
        "val": [make("a", 9)],
        "test": [make("a", 8), make("zebra", 1)],
    }
    with pytest.raises(LmlabError, match=r"test split has labels not in the training set: \['zebra'\]"):
        label_names(splits)


def test_empty_split_is_an_error(bbc: list[Example]) -> None:
    with pytest.raises(LmlabError, match="The val split is empty"):
        build_splits(bbc, fractions=FRACTIONS, split_seed=0, max_samples={"val": 0})


def test_files_source_reports_missing_column(tmp_path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("body,category\nhello,a\nworld,b\n")
    with pytest.raises(LmlabError, match=r"Column 'text'.*Columns found: \['body', 'category'\]"):
        files(path=str(path))
    examples = files(path=str(path), text_column="body", label_column="category")
    assert [(ex.text, ex.label) for ex in examples] == [("hello", "a"), ("world", "b")]


def test_files_source_missing_file(tmp_path) -> None:
    with pytest.raises(LmlabError, match="Data file not found: .*nope.csv"):
        files(path=str(tmp_path / "nope.csv"))


def test_multi_label_separator(tmp_path) -> None:
    path = tmp_path / "data.tsv"
    path.write_text("text\tlabel\nx\ta|b\ny\tb\n")
    examples = files(path=str(path), label_separator="|")
    assert [ex.label for ex in examples] == [["a", "b"], ["b"]]


# ---------------------------------------------------------------- near-duplicates across splits
def _words(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(VOCAB) for _ in range(n)]


VOCAB = [f"w{i}" for i in range(500)]  # random words: two independent texts share no 8-gram


def _near_copy_splits() -> dict[str, list[Example]]:
    """Pre-split data with known overlaps: test[0] = train[0] with 3 words changed (containment ~0.6), test[1] =
    half of train[1] + new words (~0.4), val[0] = train[2] verbatim plus a sentence (~0.9), test[2] = val[1] with
    one word changed; everything else is independent."""
    rng = random.Random(0)
    train = [_words(rng, 60) for _ in range(10)]
    copy0 = list(train[0])
    for i in (10, 30, 50):
        copy0[i] = "changed"
    val1 = _words(rng, 60)
    val = [train[2] + _words(rng, 5), val1, _words(rng, 60)]
    test = [copy0, train[1][:30] + _words(rng, 40), val1[:59] + ["changed"], _words(rng, 60)]
    make = lambda split, i, words: Example(f"{split}{i}", " ".join(words), "ab"[i % 2])  # noqa: E731
    return {
        name: [make(name, i, w) for i, w in enumerate(docs)]
        for name, docs in (("train", train), ("val", val), ("test", test))
    }


def test_shingles_and_containment() -> None:
    assert shingles("one two three four five six seven") == set()  # shorter than 8 words: never a near-copy
    text = "The cat sat on the mat, and then the dog sat on the cat."
    assert shingles(text) == shingles(text.upper().replace(",", " ;"))  # case and punctuation do not matter
    assert len(shingles(text)) == 14 - 8 + 1
    splits = _near_copy_splits()
    found = find_near_duplicates(splits, threshold=0.5)
    assert found == {("train", "val"): [0], ("train", "test"): [0], ("val", "test"): [2]}
    assert find_near_duplicates(splits, threshold=0.3)[("train", "test")] == [0, 1]  # test[1]: 23 of 63 shared
    assert find_near_duplicates(splits, threshold=1.0)[("train", "test")] == []


def test_near_duplicate_cache_returns_the_computed_answer_and_never_a_stale_one(tmp_path: Path) -> None:
    splits = _near_copy_splits()
    want = find_near_duplicates(splits, threshold=0.5)
    assert find_near_duplicates(splits, 0.5, cache_dir=tmp_path) == want  # computed, then written
    (written,) = tmp_path.glob("near-*.json")
    assert find_near_duplicates(splits, 0.5, cache_dir=tmp_path) == want  # read back: the same answer
    # The second call reads the file: an edited (but valid) file is what comes back.
    written.write_text(json.dumps({"train&val": [], "train&test": [3], "val&test": []}))
    assert find_near_duplicates(splits, 0.5, cache_dir=tmp_path)[("train", "test")] == [3]
    # Another threshold, one changed word, or a text moved to another split: another key, computed afresh.
    assert find_near_duplicates(splits, 0.3, cache_dir=tmp_path)[("train", "test")] == [0, 1]
    edited = {**splits, "test": [replace(splits["test"][0], text=splits["test"][0].text + " x"), *splits["test"][1:]]}
    assert find_near_duplicates(edited, 0.5, cache_dir=tmp_path) == want
    moved = {**splits, "val": splits["val"][:2], "test": [splits["val"][2], *splits["test"]]}
    assert find_near_duplicates(moved, 0.5, cache_dir=tmp_path) == find_near_duplicates(moved, 0.5)
    assert len(list(tmp_path.glob("near-*.json"))) == 4
    # A broken or impossible file (an index past the split's end) is recomputed and rewritten.
    for bad in ("{not json", json.dumps({"train&val": [99], "train&test": [], "val&test": []})):
        written.write_text(bad)
        assert find_near_duplicates(splits, 0.5, cache_dir=tmp_path) == want
        assert json.loads(written.read_text()) == {"train&val": [0], "train&test": [0], "val&test": [2]}


def test_dedupe_near_drops_near_copies_from_val_and_test() -> None:
    source = _near_copy_splits()
    exact, report = build_splits(source, fractions=FRACTIONS, split_seed=0, dedupe="exact")
    assert [len(exact[s]) for s in SPLITS] == [10, 3, 4]  # exact dedupe keeps them all, but reports them
    assert {k: v for k, v in report.items() if k.startswith("near")} == {
        "near_train&val": 1,
        "near_train&test": 1,
        "near_val&test": 1,
    }
    near, report = build_splits(source, fractions=FRACTIONS, split_seed=0, dedupe="near")
    assert [ex.id for ex in near["val"]] == ["val1", "val2"]
    assert [ex.id for ex in near["test"]] == ["test1", "test3"]
    assert near["train"] == exact["train"]  # dropped, not moved: train is the exact-dedupe training set
    assert report["near_dropped_val"] == 1 and report["near_dropped_test"] == 2
    strict, _ = build_splits(source, fractions=FRACTIONS, split_seed=0, dedupe="near", near_duplicate_threshold=0.3)
    assert [ex.id for ex in strict["test"]] == ["test3"]


def test_bbc_near_duplicates_in_the_default_split(bbc: list[Example]) -> None:
    _, exact = build_splits(bbc, fractions=FRACTIONS, split_seed=0, dedupe="exact")
    # What exact dedupe leaves in the default split (measured: 15 val, 14 test articles near a training one).
    assert (exact["near_train&val"], exact["near_train&test"], exact["near_val&test"]) == (15, 14, 2)
    splits, near = build_splits(bbc, fractions=FRACTIONS, split_seed=0)  # the default: dedupe=near
    assert [len(splits[s]) for s in SPLITS] == [1703, 212 - 15, 212 - 16]
    assert (near["near_dropped_val"], near["near_dropped_test"]) == (15, 16)
    assert all(not v for v in find_near_duplicates(splits, 0.5).values())


def test_dedupe_values() -> None:
    assert [dedupe_mode(v) for v in (True, False, "near", "EXACT", "none")] == [
        "exact",
        "none",
        "near",
        "exact",
        "none",
    ]
    with pytest.raises(LmlabError, match=r"dataset.dedupe='fuzzy' is not one of \['near', 'exact', 'none'\]"):
        dedupe_mode("fuzzy")
    for bad in (0, 1.5, -0.1, float("nan"), "half", True):
        with pytest.raises(LmlabError, match=r"near_duplicate_threshold=.* must be a number in \(0, 1\]"):
            check_threshold(bad)
    assert check_threshold(1) == 1.0


def test_near_dedupe_that_empties_a_split_says_so() -> None:
    rows = [Example(f"t{i}", " ".join(f"w{j}" for j in range(20)) + f" n{i}", "ab"[i % 2]) for i in range(2)]
    source = {"train": rows[:1], "val": rows[1:], "test": [rows[0]]}
    with pytest.raises(LmlabError, match="val split is empty. dataset.dedupe=near dropped 1 near-copies"):
        build_splits(source, fractions=FRACTIONS, split_seed=0)


# ---------------------------------------------------------------- data files: read exactly, errors name file + line
def test_csv_cells_are_kept_as_written_with_their_lines(tmp_path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"multi\nline text",007\n\n1e3,NA\n')
    examples = files(path=str(path))
    assert [(ex.text, ex.label) for ex in examples] == [("multi\nline text", "007"), ("1e3", "NA")]
    assert [ex.origin for ex in examples] == [f"{path} row 1 (line 2)", f"{path} row 2 (line 5)"]


def test_missing_labels_are_kept_as_none(tmp_path) -> None:
    csv_path, jsonl = tmp_path / "d.csv", tmp_path / "d.jsonl"
    csv_path.write_text("text,label\na,x\nb,\nc,  \nd,nan\ne,NaN\nf,null\n")
    assert [ex.label for ex in files(path=str(csv_path))] == ["x", None, None, None, None, None]
    jsonl.write_text(
        '{"text": "a", "label": 1}\n{"text": "b", "label": null}\n{"text": "c", "label": NaN}\n'
        '{"text": "d"}\n{"text": null, "label": 2}\n'
    )
    examples = files(path=str(jsonl))
    assert [ex.label for ex in examples] == ["1", None, None, None, "2"]
    assert examples[4].text == ""  # a null text is empty (the classification task refuses it), not "None"
    assert examples[2].origin == f"{jsonl} row 3 (line 3)"


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("fields.csv", "text,label\na,x\nb,with, comma\n", r"fields.csv, line 3: 3 fields, but the header has 2"),
        (
            "fields.tsv",
            "text\tlabel\na\tx\n\tb\tc\n",
            r"fields.tsv, line 3: 3 fields.*quote a text that contains a tab",
        ),
        (
            "bad.jsonl",
            '{"text": "a", "label": "x"}\n\n{"text": "b", "label": x}\n',
            r"bad.jsonl, line 3: not valid JSON \(Expecting value, column 24\).*one JSON object",
        ),
        ("list.jsonl", '["a", "x"]\n', r"list.jsonl, line 1: a JSON list, not an object"),
        ("bad.json", '[{"text": "a",\n "label": }]', r"bad.json, line 2: not valid JSON"),
        ("empty.csv", "", r"empty.csv is empty"),
        ("blank.jsonl", "\n \n", r"blank.jsonl is empty"),
        ("header.csv", "text,label\n", r"header.csv has a header \['text', 'label'\] but no data rows"),
    ],
)
def test_bad_data_files_name_the_file_and_line(tmp_path, name: str, content: str, message: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(LmlabError, match=message):
        files(path=str(tmp_path / name))


def test_undecodable_bytes_name_the_offset(tmp_path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ngood,a\nco\u00fbt,b\n".encode("latin-1"))
    with pytest.raises(
        LmlabError,
        match=r"latin.csv: not UTF-8 at byte offset 20 \(line 3.*Re-encode the file as "
        r"UTF-8",
    ):
        files(path=str(path))
    (tmp_path / "latin.txt").write_bytes("co\u00fbt\n".encode("latin-1"))  # plain text keeps the Latin-1 fallback
    assert [ex.text for ex in files(path=str(tmp_path / "latin.txt"))] == ["co\u00fbt"]
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufefftext,label\nx,a\n".encode())
    assert files(path=str(bom))[0].text == "x"  # a BOM is not part of the first column's name


# ---------------------------------------------------------------- labels, for classification only
def _prepare(examples: list[Example], **splits: list[Example]):
    from types import SimpleNamespace

    from lmlab.tasks import ClassificationTask

    datamodule = SimpleNamespace(
        splits=splits or {"train": examples, "val": examples, "test": examples},
        source_examples=examples,
        label_order=None,
        one_vs_rest=None,
    )
    task = ClassificationTask("classification", "val/f1_macro", "max", "best/val_f1_macro")
    task.prepare(datamodule)
    return task


def test_classification_refuses_missing_labels_empty_texts_and_one_class(tmp_path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,label\n" + "".join(f"t{i},{'' if i % 3 == 0 else 'ab'[i % 2]}\n" for i in range(30)))
    with pytest.raises(
        LmlabError,
        match=rf"10 of 30 rows have no label \(null, NaN or empty\): {path}: row 1 "
        rf"\(line 2\), row 4 \(line 5\), .*row 13 \(line 14\) and 5 more\. .*"
        rf"fill them in or remove",
    ):
        _prepare(files(path=str(path)))
    path.write_text("text,label\n" + "".join(f"{'  ' if i % 3 else f't{i}'},{'ab'[i % 2]}\n" for i in range(9)))
    with pytest.raises(LmlabError, match=r"6 of 9 rows have an empty text: .*row 2 \(line 3\).*Fill in the text"):
        _prepare(files(path=str(path)))
    one = [Example(f"e{i}", f"text {i}", "sports") for i in range(5)]
    with pytest.raises(LmlabError, match=r"single class \('sports', all 5 examples\).*F1 = 1.000"):
        _prepare(one)
    assert _prepare([Example("a", "x", "a"), Example("b", "y", "b")]).labels == ["a", "b"]


def test_causal_lm_ignores_null_labels(tmp_path) -> None:
    from hydra.utils import instantiate

    from tests.conftest import compose_train

    path = tmp_path / "corpus.csv"
    path.write_text(
        "text,label\n" + "".join(f"document number {i} about things,{'' if i % 2 else 'x'}\n" for i in range(40))
    )
    for task, ok in (("causal_lm", True), ("classification", False)):
        cfg = compose_train([f"task={task}", "dataset=files", f"dataset.source.path={path}"], tmp_path / task)
        datamodule = instantiate(cfg.dataset)
        datamodule.load()
        assert sum(len(s) for s in datamodule.splits.values()) == 40
        if ok:
            instantiate(cfg.task).prepare(datamodule)
        else:
            with pytest.raises(LmlabError, match="20 of 40 rows have no label"):
                instantiate(cfg.task).prepare(datamodule)


def test_labels_order_mismatch_names_the_difference() -> None:
    splits = {s: [Example(f"{s}{i}", f"t{i}", "ab"[i % 2]) for i in range(4)] for s in SPLITS}
    with pytest.raises(
        LmlabError,
        match=r"not training labels: \['zebra'\]; training labels missing: \['b'\].*"
        r"dataset.labels=null",
    ):
        label_names(splits, ["a", "zebra"])
    with pytest.raises(LmlabError, match=r"repeated: \['a'\]"):
        label_names(splits, ["a", "b", "a"])


def test_hf_unlabelled_rows_are_missing_not_the_last_class(tmp_path) -> None:
    import datasets

    from lmlab.data.sources import hf

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [0, 1, -1]}, features=features).save_to_disk(
        str(tmp_path / "d")
    )
    assert [ex.label for ex in hf(load_from_disk=str(tmp_path / "d"))] == ["neg", "pos", None]  # -1 = unlabelled
