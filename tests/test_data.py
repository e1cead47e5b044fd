"""Sources, splits, dedupe and label checks — the data path before any model is involved."""

from __future__ import annotations

from collections import Counter

import pytest

from lmlab.config import LmlabError
from lmlab.data.sources import Example, bbc_news, files
from lmlab.data.splits import build_splits, duplicate_report, fingerprint, label_names, stratified_split

FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


@pytest.fixture(scope="module")
def bbc() -> list[Example]:
    return bbc_news()


def test_bbc_news_is_complete(bbc: list[Example]) -> None:
    assert len(bbc) == 2225
    assert Counter(ex.label for ex in bbc) == {"business": 510, "entertainment": 386, "politics": 417,
                                               "sports": 511, "tech": 401}
    assert len({ex.id for ex in bbc}) == 2225
    assert all(ex.text for ex in bbc)


def test_bbc_duplicates_are_reported_and_removed(bbc: list[Example]) -> None:
    splits, dupes = build_splits(bbc, fractions=FRACTIONS, split_seed=0, dedupe=True)
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
    splits = {"train": [make("a", i) for i in range(3)], "val": [make("a", 9)],
              "test": [make("a", 8), make("zebra", 1)]}
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
