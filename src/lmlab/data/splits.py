"""From a source's examples to checked train/val/test splits: dedupe, stratified split, label checks."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from lmlab.data.near_duplicates import find_near_duplicates
from lmlab.data.sources import SPLITS, Example, SourceOutput
from lmlab.errors import LmlabError

log = logging.getLogger(__name__)


# dataset.dedupe: near = exact + near-copies of earlier splits out of val/test (the default: an honest test set);
# exact = identical texts only; none = keep everything. Legacy booleans: true = exact, false = none.
DEDUPE_MODES = ("near", "exact", "none")


def dedupe_mode(value: Any) -> str:
    """dataset.dedupe as one of DEDUPE_MODES (true/false are the old exact/none)."""
    if value is True or value is False:
        return "exact" if value else "none"
    if isinstance(value, str) and value.lower() in DEDUPE_MODES:
        return value.lower()
    raise LmlabError(
        f"dataset.dedupe={value!r} is not one of {list(DEDUPE_MODES)} (true = exact, false = none). "
        f"Set dataset.dedupe=near (the default: near-copies of training texts kept out of val/test), "
        f"exact (identical texts only) or none."
    )


def check_threshold(value: Any) -> float:
    """dataset.near_duplicate_threshold: a containment in (0, 1]."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not 0 < value <= 1:
        raise LmlabError(
            f"dataset.near_duplicate_threshold={value!r} must be a number in (0, 1]: the share of a "
            f"val/test text's word 8-grams found in an earlier split that makes it a near-copy. "
            f"Set e.g. dataset.near_duplicate_threshold=0.5 (the default)."
        )
    return float(value)


def _content(ex: Example) -> tuple[str, str | None]:
    return (ex.text, ex.text_pair)


def duplicate_report(splits: Mapping[str, Sequence[Example]]) -> dict[str, int]:
    """Count exact-duplicate texts inside each split and shared between splits."""
    report: dict[str, int] = {}
    seen: dict[str, set] = {}
    for split, examples in splits.items():
        contents = [_content(ex) for ex in examples]
        report[f"within_{split}"] = len(contents) - len(set(contents))
        seen[split] = set(contents)
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            report[f"{a}&{b}"] = len(seen[a] & seen[b])
    return report


def _dedupe(examples: Sequence[Example], known: set | None = None) -> list[Example]:
    seen = set() if known is None else set(known)
    kept = []
    for ex in examples:
        key = _content(ex)
        if key not in seen:
            seen.add(key)
            kept.append(ex)
    return kept


def _stratum(ex: Example) -> str:
    return json.dumps(ex.label)  # multi-label data stratifies on the exact label set


def stratified_split(
    examples: Sequence[Example], fractions: Mapping[str, float], seed: int, stratify: bool = True
) -> dict[str, list[Example]]:
    """Deterministic split: same examples + fractions + seed give the same splits on any machine."""
    rng = random.Random(seed)
    groups: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        groups[_stratum(ex) if stratify else ""].append(ex)
    out: dict[str, list[Example]] = {split: [] for split in SPLITS}
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda ex: ex.id)
        rng.shuffle(members)
        n_val = round(len(members) * fractions["val"])
        n_test = round(len(members) * fractions["test"])
        out["val"] += members[:n_val]
        out["test"] += members[n_val : n_val + n_test]
        out["train"] += members[n_val + n_test :]
    for split in SPLITS:  # mix the classes, so dataset.max_samples takes a representative subset
        rng.shuffle(out[split])
    return out


def relabel_one_vs_rest(splits: Mapping[str, Sequence[Example]], positive: str | None) -> dict[str, list[Example]]:
    """`positive` vs `not_<positive>` on every split. Applied after the split, never before it: the split of a
    source is then the same whatever its labelling, so two tasks on one source (multi-task learning) get the same
    train/val/test articles, and neither trains on the other's test set."""
    if not positive:
        return {split: list(exs) for split, exs in splits.items()}
    labels = {
        ex.label for exs in splits.values() for ex in exs if ex.label is not None and not isinstance(ex.label, list)
    }
    if positive not in labels:
        raise LmlabError(f"dataset.one_vs_rest={positive!r} is not a label of this data; labels: {sorted(labels)}.")
    # A missing label stays missing (the classification task refuses it), not "not_<positive>".
    return {
        split: [
            ex if ex.label is None else replace(ex, label=positive if ex.label == positive else f"not_{positive}")
            for ex in exs
        ]
        for split, exs in splits.items()
    }


def near_duplicate_report(
    splits: Mapping[str, Sequence[Example]], threshold: float, cache_dir: str | Path | None = None
) -> tuple[dict[str, int], dict[str, set[int]]]:
    """Counts of val/test texts that are near-copies of an earlier split (`near_train&test`, ...), and per split
    the indices `dedupe=near` drops: val near train; test near train or val."""
    found = find_near_duplicates(splits, threshold, cache_dir)
    report = {f"near_{a}&{b}": len(indices) for (a, b), indices in found.items()}
    drop = {"val": set(found[("train", "val")]), "test": set(found[("train", "test")]) | set(found[("val", "test")])}
    return report, drop


def build_splits(
    source_output: SourceOutput,
    *,
    fractions: Mapping[str, float],
    split_seed: int,
    dedupe: str | bool = "near",
    near_duplicate_threshold: float = 0.5,
    stratify: bool = True,
    one_vs_rest: str | None = None,
    max_samples: Mapping[str, int | None] | None = None,
) -> tuple[dict[str, list[Example]], dict[str, int]]:
    """Return the splits to train on (`split_examples`, then `relabel_one_vs_rest`) and the duplicate report."""
    splits, duplicates = split_examples(
        source_output,
        fractions=fractions,
        split_seed=split_seed,
        dedupe=dedupe,
        near_duplicate_threshold=near_duplicate_threshold,
        stratify=stratify,
        max_samples=max_samples,
    )
    return relabel_one_vs_rest(splits, one_vs_rest), duplicates


def split_examples(
    source_output: SourceOutput,
    *,
    fractions: Mapping[str, float],
    split_seed: int,
    dedupe: str | bool = "near",
    near_duplicate_threshold: float = 0.5,
    stratify: bool = True,
    max_samples: Mapping[str, int | None] | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[dict[str, list[Example]], dict[str, int]]:
    """The splits of a source with its own labels (stratified on them), and the duplicate report: exact duplicates
    measured before dedupe, near duplicates (`near_<a>&<b>`) in the split before near dedupe (with exact/near: what
    dedupe=exact keeps), and how many val/test examples dedupe=near dropped (`near_dropped_<split>`). `cache_dir`:
    where the near-duplicate search keeps its result (None: computed every time)."""
    mode = dedupe_mode(dedupe)
    threshold = check_threshold(near_duplicate_threshold)
    if isinstance(source_output, dict):
        splits = {split: list(source_output[split]) for split in SPLITS}
        duplicates = duplicate_report(splits)
        if mode != "none":
            # Pre-split data: drop repeats inside a split and val/test copies of training texts (leakage).
            train = _dedupe(splits["train"])
            known = {_content(ex) for ex in train}
            splits = {"train": train, "val": _dedupe(splits["val"], known), "test": _dedupe(splits["test"], known)}
    else:
        pool = list(source_output)
        pool_dupes = len(pool) - len({_content(ex) for ex in pool})
        # What a split without dedupe would contain, so the report shows the leakage dedupe prevents.
        duplicates = duplicate_report(stratified_split(pool, fractions, split_seed, stratify))
        duplicates["in_pool"] = pool_dupes
        splits = stratified_split(_dedupe(pool) if mode != "none" else pool, fractions, split_seed, stratify)
    near, drop = near_duplicate_report(splits, threshold, cache_dir)
    duplicates.update(near)
    if mode == "near":
        # Dropped, not moved to train: train already holds their content, and it stays the exact-dedupe training
        # set, so `near` and `exact` differ only in which val/test texts are scored.
        for split, indices in drop.items():
            splits[split] = [ex for i, ex in enumerate(splits[split]) if i not in indices]
            duplicates[f"near_dropped_{split}"] = len(indices)
    for split, limit in (max_samples or {}).items():
        if limit is not None:
            splits[split] = splits[split][: int(limit)]
    for split in SPLITS:
        if not splits[split]:
            dropped = duplicates.get(f"near_dropped_{split}", 0)
            why = (
                f" dataset.dedupe=near dropped {dropped} near-copies of earlier splits from it; if the texts are "
                f"meant to overlap (templates), set dataset.dedupe=exact."
                if dropped
                else ""
            )
            raise LmlabError(
                f"The {split} split is empty.{why} Check the data, dataset.fractions, and "
                f"dataset.max_samples.{split} (must be > 0)."
            )
    return splits, duplicates


def label_names(splits: Mapping[str, Sequence[Example]], order: Sequence[str] | None = None) -> list[str]:
    """The label list (sorted unless given); val/test labels outside the training set are an error."""

    def names(examples: Sequence[Example]) -> set[str]:
        found: set[str] = set()
        for ex in examples:
            found.update(ex.label if isinstance(ex.label, list) else [ex.label])
        return found

    train = names(splits["train"])
    for split in ("val", "test"):
        unknown = names(splits[split]) - train
        if unknown:
            raise LmlabError(
                f"The {split} split has labels not in the training set: {sorted(unknown)} "
                f"(training labels: {sorted(train)}). Fix the data or the split so every class occurs in train."
            )
    if order is None:
        return sorted(train)
    order = list(order)
    if set(order) != train or len(order) != len(set(order)):
        unknown, missing = sorted(set(order) - train), sorted(train - set(order))
        repeated = sorted({name for name in order if order.count(name) > 1})
        problems = "; ".join(
            f"{what}: {names}"
            for what, names in (
                ("not training labels", unknown),
                ("training labels missing", missing),
                ("repeated", repeated),
            )
            if names
        )
        raise LmlabError(
            f"dataset.labels={order} does not match the training labels {sorted(train)} ({problems}). "
            f"List each training label once, in the order you want, or set dataset.labels=null "
            f"(sorted)."
        )
    return order


def fingerprint(splits: Mapping[str, Sequence[Example]]) -> str:
    """A hash of the exact examples used, per split: equal fingerprints mean equal data."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for ex in splits[split]:
            digest.update(json.dumps([split, ex.id, ex.text, ex.text_pair, ex.label]).encode())
    return digest.hexdigest()[:16]
