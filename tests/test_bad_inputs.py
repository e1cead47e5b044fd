"""The catalogue of bad inputs: the spec of how lmlab refuses them, kept in one place.

Every case runs the real entry point (`lmlab.train.main` / `lmlab.eval.main`, Hydra included) in this process, as
`python train.py <args>` would (one import of the stack for all cases instead of one per case), and must:
exit non-zero, print a message naming the value and the fix (the `expect` strings), print no traceback, and leave
nothing that looks finished (no metrics.json, no `completed` status).

Sections: config values, data files, checkpoints and run dirs, environment. A case's `args` and `setup` may use
`{tmp}` (the case's own empty directory, also its cwd) and `{data}` (the bad data files written by `_data`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Keep each case small: a few steps of the tiny random-init BERT where a case gets as far as training.
FAST = [
    "model=tiny_bert",
    "dataset.max_length=16",
    "dataset.max_samples.train=32",
    "dataset.max_samples.val=16",
    "dataset.max_samples.test=16",
    "trainer.max_epochs=1",
    "trainer.num_sanity_val_steps=0",
    "export_model=false",
]


@dataclass
class Case:
    args: list[str]
    expect: list[str]  # substrings of the output (the value, the fix)
    script: str = "train"  # train | eval
    setup: Callable[[Path], None] | None = None  # prepares {tmp} (checkpoints, run dirs, env) before the run
    env: dict[str, str] = field(default_factory=dict)
    base: list[str] = field(default_factory=lambda: list(FAST))


# ---------------------------------------------------------------- config values
CONFIG_CASES: dict[str, Case] = {
    "unknown_option": Case(["model=bertt"], ["Could not find 'model/bertt'", "minilm"]),
    "lr_not_a_number": Case(["optimizer.lr=abc"], ["optimizer.lr='abc' is not a number", "optimizer.lr=3e-5"]),
    "zero_batch": Case(["dataset.batch_size=0"], ["dataset.batch_size=0 is out of range", "> 0"]),
    "lr_infinite": Case(["optimizer.lr=inf"], ["optimizer.lr=inf is out of range", "finite"]),
    "lr_negative": Case(["optimizer.lr=-1e-3"], ["optimizer.lr=-0.001 is out of range", "> 0"]),
    "max_epochs_zero": Case(["trainer.max_epochs=0"], ["trainer.max_epochs=0 trains nothing", "trainer.max_epochs=1"]),
    "max_steps_zero": Case(["trainer.max_steps=0"], ["trainer.max_steps=0 trains nothing"]),
    "never_ends": Case(["trainer.max_epochs=-1"], ["never ends", "trainer.max_steps=1000"]),
    "threshold_above_one": Case(["model.threshold=1.5"], ["model.threshold=1.5 is out of range", "< 1"]),
    "threshold_zero": Case(["model.threshold=0"], ["model.threshold=0 is out of range", "> 0"]),
    "dropout_one": Case(["model.dropout=1.0"], ["model.dropout=1.0 is out of range", "< 1"]),
    "momentum_above_one": Case(["optimizer=sgd", "optimizer.momentum=1.5"], ["optimizer.momentum=1.5 is out of range"]),
    "warmup_longer_than_run": Case(
        ["scheduler.warmup=1000"], ["scheduler.warmup=1000 is 1000 warmup steps", "whole run has 1 optimizer steps"]
    ),
    "precision_unknown": Case(["trainer.precision=fp16"], ["trainer.precision='fp16' is not one of", "bf16-mixed"]),
    "seed_too_large": Case(["seed=99999999999"], ["seed=99999999999 is out of range", "< 4.29497e+09"]),
    "seed_not_integer": Case(["seed=1.5"], ["seed=1.5 is not an integer", "seed=32"]),
    "fractions_not_summing": Case(["dataset.fractions.train=0.5"], ["dataset.fractions must sum to 1, got 0.7"]),
    "fraction_zero": Case(
        ["dataset.fractions.val=0", "dataset.fractions.train=0.9"], ["dataset.fractions.val=0 is out of range"]
    ),
    "problem_type_unknown": Case(
        ["model.problem_type=regression"], ["model.problem_type='regression' is not one of", "single_label"]
    ),
    "pooling_unknown": Case(["model.pooling=max"], ["model.pooling='max' is not one of", "mean"]),
    "class_weights_word": Case(["model.class_weights=heavy"], ["model.class_weights='heavy' must be null, 'auto'"]),
    "accumulate_zero": Case(["trainer.accumulate_grad_batches=0"], ["trainer.accumulate_grad_batches=0 is out of"]),
    "limit_train_zero": Case(["trainer.limit_train_batches=0"], ["trainer.limit_train_batches=0 is out of range"]),
    "max_length_zero": Case(["dataset.max_length=0"], ["dataset.max_length=0 is out of range"]),
    "nonfinite_action_unknown": Case(
        ["callbacks.nonfinite_loss.action=ignore"],
        ["callbacks.nonfinite_loss.action='ignore' must be 'stop' or 'skip'"],
    ),
    "betas_above_one": Case(["optimizer.betas=[0.9,1.5]"], ["optimizer.betas[1]=1.5 is out of range", "< 1"]),
    "betas_one_number": Case(["optimizer.betas=[0.9]"], ["must be two numbers", "optimizer.betas=[0.9,0.999]"]),
    "max_samples_negative": Case(["dataset.max_samples.train=-5"], ["dataset.max_samples.train=-5 is out of range"]),
    "trainer_key_typo": Case(
        ["trainer.max_epoch=1"], ["trainer.max_epoch is not an argument", "did you mean max_epochs"]
    ),
    "optimizer_key_typo": Case(
        ["optimizer.learning_rate=1e-3"],
        ["optimizer.learning_rate is not an argument of torch.optim.AdamW", "did you mean lr"],
    ),
    "optimizer_key_of_another_optimizer": Case(
        ["optimizer=sgd", "optimizer.amsgrad=true"],
        ["optimizer.amsgrad is not an argument of torch.optim.SGD", "nesterov"],
    ),
    "trainer_logger_set_elsewhere": Case(["trainer.logger=false"], ["trainer.logger is set by lmlab", "logger=csv"]),
    "eval_split_unknown": Case(
        ["ckpt_path={tmp}/run", "split=dev"],
        ["split='dev' is not one of train, val, test"],
        script="eval",
        base=[],
        setup=lambda d: _fake_checkpoint(d / "run"),
    ),
}

# ---------------------------------------------------------------- data files
FILES = ["dataset=files"]  # + dataset.source.path={data}/<file>; the files are written by _data
LABEL_FIX = "fill them in or remove those rows"
DATA_CASES: dict[str, Case] = {
    "null_label_csv": Case(
        [*FILES, "dataset.source.path={data}/null_label.csv"],
        ["20 of 60 rows have no label", "{data}/null_label.csv: row 1 (line 2), row 4 (line 5)", LABEL_FIX],
    ),
    "nan_label_jsonl": Case(
        [*FILES, "dataset.source.path={data}/nan_label.jsonl"],
        [
            "2 of 60 rows have no label (null, NaN or empty)",
            "{data}/nan_label.jsonl: row 4 (line 4), row 8 (line 8)",
            LABEL_FIX,
        ],
    ),
    "nan_string_label": Case(
        [*FILES, "dataset.source.path={data}/nan_string.csv"],
        ["1 of 60 rows have no label", "row 60 (line 61)", LABEL_FIX],
    ),
    "empty_label_split_file": Case(
        [
            *FILES,
            "dataset.source.train={data}/ok2.csv",
            "dataset.source.val={data}/null_label.csv",
            "dataset.source.test={data}/ok.csv",
        ],
        ["20 of 180 rows have no label", "{data}/null_label.csv: row 1", LABEL_FIX],
    ),
    "single_class": Case(
        [*FILES, "dataset.source.path={data}/one_class.csv"],
        ["single class ('a', all", "F1 = 1.000", "dataset.source.label_column"],
    ),
    "empty_texts": Case(
        [*FILES, "dataset.source.path={data}/empty_text.csv"],
        ["20 of 60 rows have an empty text", "{data}/empty_text.csv: row 3 (line 4)", "Fill in the text"],
    ),
    "too_many_fields_csv": Case(
        [*FILES, "dataset.source.path={data}/fields.csv"],
        ["{data}/fields.csv, line 5: 3 fields, but the header has 2", "quote a text that contains a ','"],
    ),
    "invalid_jsonl_line": Case(
        [*FILES, "dataset.source.path={data}/bad.jsonl"],
        ["{data}/bad.jsonl, line 3: not valid JSON", "fix or remove that line"],
    ),
    "jsonl_not_an_object": Case(
        [*FILES, "dataset.source.path={data}/list.jsonl"],
        ["{data}/list.jsonl, line 1: a JSON list, not an object", "one object per line"],
    ),
    "invalid_json": Case(
        [*FILES, "dataset.source.path={data}/bad.json"], ["{data}/bad.json, line 2: not valid JSON", "JSON Lines"]
    ),
    "non_utf8_csv": Case(
        [*FILES, "dataset.source.path={data}/latin1.csv"],
        ["{data}/latin1.csv: not UTF-8 at byte offset 38 (line 3", "Re-encode the file as UTF-8"],
    ),
    "non_utf8_jsonl": Case(
        [*FILES, "dataset.source.path={data}/latin1.jsonl"],
        ["{data}/latin1.jsonl: not UTF-8 at byte offset", "Re-encode the file as UTF-8"],
    ),
    "empty_file": Case(
        [*FILES, "dataset.source.path={data}/empty.csv"], ["{data}/empty.csv is empty", "one example per row"]
    ),
    "header_only": Case(
        [*FILES, "dataset.source.path={data}/header.csv"],
        ["{data}/header.csv has a header ['text', 'label'] but no data rows", "Add one row"],
    ),
    "bad_dedupe": Case(
        ["dataset.dedupe=fuzzy"],
        ["dataset.dedupe='fuzzy' is not one of ['near', 'exact', 'none']", "Set dataset.dedupe=near"],
    ),
    "near_threshold_zero": Case(
        ["dataset.near_duplicate_threshold=0"],
        ["dataset.near_duplicate_threshold=0", "dataset.near_duplicate_threshold=0.5"],
    ),
    "near_threshold_above_one": Case(
        ["dataset.near_duplicate_threshold=1.5"],
        ["dataset.near_duplicate_threshold=1.5", "dataset.near_duplicate_threshold=0.5"],
    ),
    "unknown_label_in_labels": Case(
        ["dataset.labels=[business,entertainment,politics,sports,zebra]"],
        ["not training labels: ['zebra']", "training labels missing: ['tech']", "dataset.labels=null"],
    ),
    "one_vs_rest_unknown": Case(
        ["dataset.one_vs_rest=sport"], ["dataset.one_vs_rest='sport' is not a label", "'sports'"]
    ),
    "near_dedupe_empties_val": Case(
        [
            *FILES,
            "dataset.source.train={data}/near_train.csv",
            "dataset.source.val={data}/near_val.csv",
            "dataset.source.test={data}/ok2.csv",
        ],
        ["The val split is empty. dataset.dedupe=near dropped 2 near-copies", "set dataset.dedupe=exact"],
    ),
}


# ---------------------------------------------------------------- checkpoints and run dirs
def _fake_checkpoint(run_dir: Path, labels: list[str] | None = None, name: str = "last.ckpt") -> Path:
    """A small checkpoint file with lmlab's metadata only (enough for the checks that read it)."""
    import torch

    path = run_dir / "checkpoints" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 0, "state_dict": {}, "lmlab": {"labels": labels, "config": None}}, path)
    return path


def _run_files(run_dir: Path, status: str, digest: str | None = "0" * 16, metrics: bool = False) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "status.json").write_text(json.dumps({"status": status, "attempts": 1, "pid": None}))
    if digest is not None:
        (run_dir / "resolved_config.json").write_text(json.dumps({"digest": digest, "config": {"seed": 1}}))
    if metrics:
        (run_dir / "metrics.json").write_text(json.dumps({"test/f1_macro": 0.9}))


def _truncated(run_dir: Path) -> None:
    good = _fake_checkpoint(run_dir)
    good.write_bytes(good.read_bytes()[:100])


RUN_CASES: dict[str, Case] = {
    "ckpt_missing_file": Case(["ckpt_path={tmp}/nope.ckpt"], ["ckpt_path='{tmp}/nope.ckpt': no checkpoint at"]),
    "ckpt_dir_without_checkpoint": Case(
        ["ckpt_path={tmp}/empty"], ["this run dir has no checkpoint"], setup=lambda d: (d / "empty").mkdir()
    ),
    "ckpt_truncated": Case(
        ["ckpt_path={tmp}/run"],
        ["is truncated or unreadable", "start a new run"],
        setup=lambda d: _truncated(d / "run"),
    ),
    "resume_with_other_label_order": Case(
        ["ckpt_path={tmp}/run/checkpoints/last.ckpt"],
        ["was trained with labels ['tech', 'business']", "dataset.labels="],
        setup=lambda d: _fake_checkpoint(d / "run", ["tech", "business"]),
    ),
    "eval_not_an_lmlab_checkpoint": Case(
        ["ckpt_path={tmp}/run/checkpoints/last.ckpt"],
        ["has no lmlab run config", "not written by lmlab-train"],
        script="eval",
        base=[],
        setup=lambda d: _fake_checkpoint(d / "run"),
    ),
    "eval_nothing_to_evaluate": Case(
        ["paths.log_dir={tmp}/logs"],
        ["usage: python eval.py ckpt_path=<run dir | .ckpt>", "eval.py needs ckpt_path=<run dir | .ckpt>"],
        script="eval",
        base=[],
    ),
    "run_dir_holds_completed_run": Case(
        ["hydra.run.dir={tmp}/done"],
        ["already holds a completed run", "python eval.py ckpt_path="],
        setup=lambda d: _run_files(d / "done", "completed", metrics=True),
    ),
    "run_dir_holds_other_config": Case(
        ["hydra.run.dir={tmp}/other"],
        ["holds an unfinished run of a different configuration", "seed: 1 -> 42"],
        setup=lambda d: _run_files(d / "other", "failed"),
    ),
    "run_dir_holds_unrecorded_run": Case(
        ["hydra.run.dir={tmp}/old"],
        ["whose config is not recorded"],
        setup=lambda d: _run_files(d / "old", "failed", digest=None),
    ),
}

# ---------------------------------------------------------------- environment
ENV_CASES: dict[str, Case] = {
    "wandb_online_without_key": Case(
        ["logger=wandb", "logger.wandb.mode=online"],
        ["W&B mode 'online' needs an API key", "wandb login", "logger.wandb.mode=offline"],
        env={"WANDB_API_KEY": "", "NETRC": "{tmp}/no-netrc", "WANDB_MODE": ""},
    ),
    "model_offline": Case(
        ["model=bert"],
        ["Model 'bert-base-uncased' (model.name_or_path) is not a local directory", "HF_HUB_OFFLINE=1", "model=minilm"],
        env={"HF_HUB_OFFLINE": "1"},
    ),
    "model_hub_unreachable": Case(
        ["model=bert"],
        ["the Hugging Face hub (http://127.0.0.1:9) cannot be reached", "model=minilm"],
        env={"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"},
    ),
    "model_dir_missing": Case(
        ["model=bert", "model.name_or_path={tmp}/models/my-bert"],
        ["model.name_or_path={tmp}/models/my-bert: the directory", "does not exist"],
    ),
    "wandb_mode_unknown": Case(
        ["logger=wandb"], ["W&B mode 'sometimes'", "is not one of"], env={"WANDB_MODE": "sometimes"}
    ),
}

if shutil.which("nvidia-smi") is None:  # a machine without a GPU
    CONFIG_CASES["gpu_without_gpu"] = Case(
        ["trainer=gpu"], ["trainer.accelerator=gpu (e.g. trainer=gpu), but this machine has no GPU", "Use trainer=cpu"]
    )
    CONFIG_CASES["eval_gpu_without_gpu"] = Case(
        ["ckpt_path={tmp}/run", "accelerator=gpu"],
        ["accelerator=gpu (e.g. trainer=gpu), but this machine has no GPU"],
        script="eval",
        base=[],
        setup=lambda d: _fake_checkpoint(d / "run"),
    )

CASES = {**CONFIG_CASES, **DATA_CASES, **RUN_CASES, **ENV_CASES}


def _data(root: Path) -> Path:
    """Bad (and one good) data files for the DATA_CASES, under `root/data`."""
    data = root / "data"
    data.mkdir()
    rows = [(f"text number {i} about {'ab'[i % 2]}", "ab"[i % 2]) for i in range(60)]

    def table(cells: list[tuple[str, str]]) -> str:
        return "text,label\n" + "".join(f"{text},{label}\n" for text, label in cells)

    def jsonl(records: list[dict]) -> str:
        return "".join(json.dumps(r) + "\n" for r in records)

    (data / "ok.csv").write_text(table(rows))
    (data / "ok2.csv").write_text(table([(f"another text {i}", label) for i, (_, label) in enumerate(rows)]))
    (data / "null_label.csv").write_text(table([(t, "" if i % 3 == 0 else lab) for i, (t, lab) in enumerate(rows)]))
    (data / "nan_label.jsonl").write_text(
        jsonl([{"text": t, "label": None if i in (3, 7) else lab} for i, (t, lab) in enumerate(rows)]).replace(
            "null", "NaN", 1
        )
    )
    (data / "nan_string.csv").write_text(table([*rows[:-1], (rows[-1][0], "nan")]))
    (data / "one_class.csv").write_text(table([(t, "a") for t, _ in rows]))
    (data / "empty_text.csv").write_text(table([(" " if i % 3 == 2 else t, lab) for i, (t, lab) in enumerate(rows)]))
    (data / "fields.csv").write_text(table(rows[:3]) + "a text, with a comma,b\n" + table(rows[3:])[11:])
    (data / "bad.jsonl").write_text(jsonl([{"text": "a", "label": "a"}]) + "\n{'text': 'b', 'label': 'b'}\n")
    (data / "list.jsonl").write_text('["a text", "a"]\n')
    (data / "bad.json").write_text('[{"text": "a", "label": "a"},\n {"text": "b", "label": }]\n')
    (data / "latin1.csv").write_bytes((table(rows[:1]) + "caf\u00e9 au lait,b\n").encode("latin-1"))
    (data / "latin1.jsonl").write_bytes(jsonl([{"text": "a", "label": "a"}]).encode() + b'{"text": "\xe9"}\n')
    (data / "empty.csv").write_text("")
    (data / "header.csv").write_text("text,label\n")
    # Long templated texts: every val text shares most of its word 8-grams with a training text.
    template = "the market rose again today as shares in the company climbed after the annual report"
    (data / "near_val.csv").write_text(table([(f"{template} {i}", "ab"[i % 2]) for i in range(2)]))
    (data / "near_train.csv").write_text(table([*rows, *((f"{template} {i}", "ab"[i % 2]) for i in range(5, 7))]))
    return data


def run_entry(
    script: str, args: list[str], cwd: Path, capfd: pytest.CaptureFixture, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """`python <script>.py args` in this process: (exit code, stdout + stderr)."""
    from hydra.core.global_hydra import GlobalHydra

    module = __import__(f"lmlab.{script}", fromlist=["main"])
    old_argv, old_cwd, old_env = sys.argv, os.getcwd(), dict(os.environ)
    sys.argv, code = [f"{script}.py", *args], 0
    os.chdir(cwd)
    os.environ.update(env or {})
    try:
        module.main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException as err:  # noqa: BLE001 - an escaped exception is a failure of the case, shown below
        import traceback

        code = 99
        print("Traceback (escaped the entry point):\n" + traceback.format_exc(), file=sys.stderr)
        del err
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)
        GlobalHydra.instance().clear()
    out, err_text = capfd.readouterr()
    return code, out + err_text


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused(name: str, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    case = CASES[name]
    work = tmp_path / "work"
    work.mkdir()
    data = _data(tmp_path)
    if case.setup is not None:
        case.setup(work)
    before = {p: p.stat().st_mtime_ns for p in work.rglob("metrics.json")}  # a setup's finished runs
    capfd.readouterr()  # drop what the setup printed
    fill = {"tmp": str(work), "data": str(data)}
    args = [a.format(**fill) for a in [*case.base, *case.args]]
    env = {k: v.format(**fill) for k, v in case.env.items()}
    code, output = run_entry(case.script, args, work, capfd, env)
    assert code != 0, f"exit code {code}:\n{output[-3000:]}"
    for text in case.expect:
        assert text.format(**fill) in output, f"{text!r} not in:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    after = {p: p.stat().st_mtime_ns for p in work.rglob("metrics.json")}
    assert after == before, f"metrics.json written or changed: {set(after.items()) - set(before.items())}"
    for status in work.rglob("status.json"):
        if status.parent / "metrics.json" not in before:
            assert json.loads(status.read_text())["status"] != "completed", status


def test_catalogue_has_at_least_40_cases() -> None:
    assert len(CASES) >= 40, len(CASES)
