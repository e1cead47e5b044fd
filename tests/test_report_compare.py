"""`lmlab-report` on a compare sweep (compare.json): stage 2 only, each arm's choice and edge-of-grid warning,
tokens-to-target speedups with t-intervals and bounds, test/bpb by default, stage-1 curves per arm, learning curves
from curves.csv, and performance profiles over several compare sweeps (workloads); on synthetic sweeps written with
the real writers (curves.csv: EvalSchedule's, compare.json: rundir.write_json), checked against computations written
out here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lmlab.callbacks.eval_schedule import EvalSchedule
from lmlab.report.cli import main
from lmlab.report.compare import edge_warning, tokens_to_target
from lmlab.rundir.files import CURVES, write_json
from tests.test_report_v2 import headless_chromium, loaded_images, row_of, write_job

META = {"meta/task": "causal_lm", "meta/monitor": "val/loss", "meta/mode": "min", "meta/score": "final"}
SEEDS = [101, 102, 103]
T975_DF2 = 4.302652729911275  # Student t 0.975 quantile, 2 degrees of freedom (tables)


LRS = ["0.001", "0.002", "0.004"]


def curve(job: Path, points: list[tuple[int, float]]) -> None:
    """curves.csv as the eval schedule writes it (its own writer: step, tokens, flops, val/* as repr)."""
    rows = [
        {"step": i + 1, "tokens": t, "flops": t * 10, "val/bpb": repr(v / math.log(2)), "val/loss": repr(v)}
        for i, (t, v) in enumerate(points)
    ]
    EvalSchedule._write(job / CURVES, rows, ["step", "tokens", "flops", "val/bpb", "val/loss"])


def linear(rate: float, start: float = 6.0, budget: int = 1000, every: int = 100) -> list[tuple[int, float]]:
    """val/loss falling by `rate` per token from `start`, evaluated every `every` tokens up to `budget`."""
    return [(t, start - rate * t) for t in range(every, budget + 1, every)]


def stage1_value(i: int, chosen: int) -> float:
    """Stage-1 mean of grid point i: rising with the lr except at the chosen point, which is lowest."""
    return 5.0 + 0.01 * i - 0.1 * (i == chosen)


STEP_FACTOR = [1.2, 1.1, 1.3]  # a non-baseline arm's step time / the baseline's, per confirm seed


def make_sweep(root: Path, rates: dict[str, list[float]], choice_index: dict[str, int]) -> Path:
    """A finished compare sweep as the compare sweeper lays it out: arms `rates` (adamw the baseline), each with
    the grid LRS; tune/<arm>/<job>/ and confirm/<job>/ jobs; confirm runs fall linearly (`linear`)."""
    arms = {arm: [f"optimizer={arm}"] for arm in rates}
    record = {
        "optimized_metric": "best/val_loss",
        "mode": "min",
        "baseline": "adamw",
        "tune_seeds": [1],
        "confirm_seeds": SEEDS,
        "trials_per_arm": 3,
        "arms": {},
        "confirm": [],
        "stage": "done",
    }
    for arm, overrides in arms.items():
        trials = []
        for i, lr in enumerate(LRS):
            value = stage1_value(i, choice_index[arm])
            job = root / "tune" / arm / f"optimizer.lr={lr},seed=1"
            write_job(job, [*overrides, f"optimizer.lr={lr}", "seed=1"], {"val/loss": value, "test/bpb": 9.0, **META})
            trials.append({"overrides": [f"optimizer.lr={lr}"], "values": [value], "mean": value, "failed": False,
                           "dirs": [str(job.relative_to(root))]})  # fmt: skip
        chosen = trials[choice_index[arm]]["overrides"]
        record["arms"][arm] = {"overrides": overrides, "space": {"optimizer.lr": LRS}, "trials": trials,
                               "choice": {"index": choice_index[arm], "overrides": chosen, "mean": 4.9}}  # fmt: skip
    for s, seed in enumerate(SEEDS):
        for arm in arms:
            points = linear(rates[arm][s])
            name = f"confirm/arm={arm},seed={seed}"
            overrides = [*arms[arm], *record["arms"][arm]["choice"]["overrides"]]
            final = points[-1][1]
            step_s = (0.1 + 0.01 * s) * (1.0 if arm == "adamw" else STEP_FACTOR[s])
            write_job(root / name, [*overrides, f"seed={seed}"],
                      {"val/loss": final, "test/loss": final, "test/bpb": final / math.log(2),
                       "perf/train_step_time_s": step_s, **META})  # fmt: skip
            curve(root / name, points)
            record["confirm"].append({"arm": arm, "seed": seed, "overrides": overrides, "dir": name})
    write_json(root / "compare.json", record)
    return root


def test_tokens_to_target_interpolates_linearly() -> None:
    rows = [(100, 5.0), (200, 4.0), (300, 3.0)]
    assert tokens_to_target(rows, 4.5) == pytest.approx(150.0)
    assert tokens_to_target(rows, 4.0) == 200.0  # reached exactly at an evaluation
    assert tokens_to_target(rows, 6.0) == 100.0  # already below at the first evaluation
    assert tokens_to_target(rows, 2.0) is None


def test_compare_report_uses_stage_2_and_computes_speedups(tmp_path: Path) -> None:
    # adamw (baseline) falls by 0.002, 0.0025, 0.003 per token; muon twice as fast on seed 101, 1.5x and 3x on the
    # others. Final baseline losses: 4.0, 3.5, 3.0 -> target 4.0 (the worst); adamw reaches it at 2.0 / rate.
    rates = {"adamw": [0.002, 0.0025, 0.003], "muon": [0.004, 0.00375, 0.009]}
    sweep = make_sweep(tmp_path / "cmp", rates, {"adamw": 1, "muon": 2})
    assert main([str(sweep), "--no-plots"]) == 0
    rep = json.loads((sweep / "report.json").read_text())
    # stage 2 only: 6 confirm jobs, not the 6 tuning jobs; paired by seed against the baseline arm's choice
    assert rep["n_jobs"] == 6 and rep["metric"] == "test/bpb"
    muon = row_of(rep, "optimizer=muon optimizer.lr=0.004")
    assert muon["n"] == 3 and muon["test"] == "paired_t"
    c = rep["compare"]
    assert c["target"] == pytest.approx(4.0)
    # independent: T = (6 - 4) / rate (the curves are linear, so interpolation is exact); ratio = rate_muon/rate_adamw
    for arm in ("adamw", "muon"):
        got = c["arms"][arm]["tokens_to_target"]
        for s, seed in enumerate(SEEDS):
            assert got[str(seed)] == pytest.approx(2.0 / rates[arm][s])
    logs = [math.log(rates["muon"][s] / rates["adamw"][s]) for s in range(3)]  # log 2, log 1.5, log 3
    mean = sum(logs) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / 2)
    speed = c["arms"]["muon"]["speedup"]
    assert speed["kind"] == "estimate" and speed["speedup"] == pytest.approx(math.exp(mean))  # (2*1.5*3)^(1/3)
    assert speed["speedup"] == pytest.approx(9 ** (1 / 3))
    assert speed["ci95_low"] == pytest.approx(math.exp(mean - T975_DF2 * sd / math.sqrt(3)))
    assert speed["ci95_high"] == pytest.approx(math.exp(mean + T975_DF2 * sd / math.sqrt(3)))
    # choices and edge-of-grid: muon's lr is the highest of its grid, adamw's in the middle
    assert c["arms"]["muon"]["choice"] == ["optimizer.lr=0.004"] and c["arms"]["adamw"]["edge_warning"] is None
    assert "arm muon: the choice sits at the edge of its grid (optimizer.lr=0.004 is the highest" in " ".join(
        rep["warnings"]
    )
    # step time: arm / baseline paired by seed, geometric mean and t-interval on the log-ratios
    step = c["arms"]["muon"]["step_time"]
    logs = [math.log(f) for f in STEP_FACTOR]
    mean, sd = sum(logs) / 3, math.sqrt(sum((x - sum(logs) / 3) ** 2 for x in logs) / 2)
    assert step["n"] == 3 and step["ratio"] == pytest.approx((1.2 * 1.1 * 1.3) ** (1 / 3))
    assert step["ci95_low"] == pytest.approx(math.exp(mean - T975_DF2 * sd / math.sqrt(3)))
    assert step["ci95_high"] == pytest.approx(math.exp(mean + T975_DF2 * sd / math.sqrt(3)))
    assert step["ms"] == pytest.approx(1000 * sum((0.1 + 0.01 * s) * f for s, f in enumerate(STEP_FACTOR)) / 3)
    assert c["arms"]["adamw"]["step_time"]["ratio"] == 1.0
    md = (sweep / "report.md").read_text()
    assert "the comparison above uses stage 2 only" in md and "extend the grid" in md
    assert f"{step['ms']:.0f} ms/step, n=3" in md and "110 ms/step (baseline)" in md


def test_edge_warning_for_an_optuna_search_names_the_values_tried() -> None:
    entry = {
        "space": {"optimizer.lr": ["0.0011", "0.0042", "0.0093"]},
        "choice": {"overrides": ["optimizer.lr=0.0093"]},
    }
    assert edge_warning("adamw", entry, "optuna") == (
        "arm adamw: the choice is at the edge of the values its Optuna trials tried (optimizer.lr=0.0093 is the "
        "highest of ['0.0011', '0.0042', '0.0093']): widen the range or give it more trials"
    )
    entry["choice"] = {"overrides": ["optimizer.lr=0.0042"]}
    assert edge_warning("adamw", entry, "optuna") is None


def test_an_arm_that_never_reaches_the_target_is_a_bound(tmp_path: Path) -> None:
    # muon's seed 102 ends above the target 4.0 (6 - 0.0015 x 1000 = 4.5): "> budget", speedup a bound, no CI
    rates = {"adamw": [0.002, 0.0025, 0.003], "muon": [0.004, 0.0015, 0.009]}
    sweep = make_sweep(tmp_path / "cmp", rates, {"adamw": 1, "muon": 1})
    assert main([str(sweep), "--no-plots"]) == 0
    c = json.loads((sweep / "report.json").read_text())["compare"]
    assert c["arms"]["muon"]["tokens_to_target"]["102"] is None
    speed = c["arms"]["muon"]["speedup"]
    assert speed["kind"] == "upper_bound" and "ci95_low" not in speed
    # the budget (1000 tokens) stands in for T on seed 102: an upper bound on the true geometric mean
    expected = (2.0 * ((2.0 / 0.0025) / 1000) * 3.0) ** (1 / 3)
    assert speed["speedup"] == pytest.approx(expected)
    assert "≤" in (sweep / "report.md").read_text() and "> budget" in (sweep / "report.md").read_text()


def test_target_option_and_unfinished_stage_1(tmp_path: Path) -> None:
    rates = {"adamw": [0.002, 0.0025, 0.003], "muon": [0.004, 0.00375, 0.009]}
    sweep = make_sweep(tmp_path / "cmp", rates, {"adamw": 1, "muon": 1})
    assert main([str(sweep), "--no-plots", "--target", "5.0"]) == 0
    c = json.loads((sweep / "report.json").read_text())["compare"]
    assert c["target"] == 5.0 and c["arms"]["adamw"]["tokens_to_target"]["101"] == pytest.approx(500.0)
    record = json.loads((sweep / "compare.json").read_text())
    del record["confirm"]
    record["error"] = "every tuning trial of arm(s) ['muon'] failed"
    (sweep / "compare.json").write_text(json.dumps(record))
    assert main([str(sweep), "--no-plots"]) == 2


RATES = {"adamw": [0.002, 0.0025, 0.003], "muon": [0.004, 0.00375, 0.009]}


def test_stage_1_curves_val_metric_plot_and_learning_curves(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path / "cmp", RATES, {"adamw": 1, "muon": 2})
    record = json.loads((sweep / "compare.json").read_text())
    first = record["arms"]["adamw"]["trials"][0]
    first.update(failed=True, mean=None, values=[None])  # a failed tuning trial: no point on its curve
    write_json(sweep / "compare.json", record)
    assert main([str(sweep)]) == 0
    rep = json.loads((sweep / "report.json").read_text())

    # Stage 1 per arm: the compare.json means the choice was made on, against lr (log axis), the choice marked.
    curves = {c["arm"]: c for c in rep["compare"]["stage1_curves"]}
    assert set(curves) == {"adamw", "muon"}
    for arm, chosen in (("adamw", 1), ("muon", 2)):
        c = curves[arm]
        assert c["key"] == "optimizer.lr" and c["log"] is True
        assert [p["x"] for p in c["points"]] == [0.001, 0.002, 0.004]
        assert [p["chosen"] for p in c["points"]] == [i == chosen for i in range(3)]
        means = [p["mean"] for p in c["points"]]
        expected = [stage1_value(i, chosen) for i in range(3)]
        if arm == "adamw":
            assert means[0] is None and means[1:] == pytest.approx(expected[1:])
        else:
            assert means == pytest.approx([5.0, 5.01, 4.92])

    # The metric-vs-hyperparameter plot shows val/loss (selection's metric), not test/bpb (the report's metric):
    # per arm's group, the mean final val/loss over the confirm seeds = 6 - rate x 1000 averaged by hand here.
    hp = rep["hparam"]
    assert hp["metric"] == "val/loss" and rep["metric"] == "test/bpb" and hp["key"] == "optimizer.lr"
    by_series = {p["series"]: p for p in hp["points"]}
    for arm in RATES:
        assert by_series[f"optimizer={arm}"]["mean"] == pytest.approx(sum(6 - r * 1000 for r in RATES[arm]) / 3)

    # Learning curves from curves.csv: val/loss against tokens, every evaluation, mean and min..max over seeds.
    lc = rep["curves"]["optimizer=muon optimizer.lr=0.004"]
    tokens = list(range(100, 1001, 100))
    assert lc["x_name"] == "tokens" and lc["n_seeds"] == 3 and lc["x"] == tokens
    assert lc["mean"] == pytest.approx([6 - t * sum(RATES["muon"]) / 3 for t in tokens])
    assert lc["low"] == pytest.approx([6 - t * max(RATES["muon"]) for t in tokens])
    assert lc["high"] == pytest.approx([6 - t * min(RATES["muon"]) for t in tokens])

    assert {"report_stage1.png", "report_learning_curves.png", "report_hparam.png"} <= set(rep["plots"])
    for p in rep["plots"]:
        assert (sweep / p).read_bytes()[:4] == b"\x89PNG"
    page = (sweep / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(rep["plots"])
    assert 'alt="report_stage1.png"' in page and 'id="compare"' in page and "extend the grid" in page


def test_learning_curves_from_curves_csv_interpolated_and_lm_default_metric(tmp_path: Path) -> None:
    # Two masked-LM seeds evaluated at different token counts: each is interpolated onto the union of the x's
    # within its own range. Seed 0 also has csv/metrics.csv (per epoch), which curves.csv takes precedence over.
    sweep = tmp_path / "mlm"
    meta = {"meta/task": "masked_lm", "meta/monitor": "val/loss", "meta/mode": "min"}
    seeds = {0: [(100, 3.0), (200, 2.0), (300, 1.0)], 1: [(150, 3.5), (250, 1.5)]}
    for seed, points in seeds.items():
        job = sweep / f"seed={seed}"
        final = points[-1][1]
        write_job(job, ["model=bert_tiny", f"seed={seed}"], {"val/loss": final, "test/loss": final,
                  "test/bpb": final / math.log(2), **meta})  # fmt: skip
        curve(job, points)
    (sweep / "seed=0" / "csv").mkdir()
    (sweep / "seed=0" / "csv" / "metrics.csv").write_text("epoch,step,val/loss\n0,10,9.0\n")
    assert main([str(sweep), "--no-plots"]) == 0
    rep = json.loads((sweep / "report.json").read_text())
    assert rep["metric"] == "test/bpb"  # an LM task: bits per byte by default
    (lc,) = rep["curves"].values()
    assert lc["x_name"] == "tokens" and lc["x"] == [100, 150, 200, 250, 300]
    # seed 0 at 150: 2.5, at 250: 1.5; seed 1 at 200: 2.5; seed 1 absent at 100 and 300
    assert lc["mean"] == pytest.approx([3.0, (2.5 + 3.5) / 2, (2.0 + 2.5) / 2, 1.5, 1.0])
    assert lc["low"] == pytest.approx([3.0, 2.5, 2.0, 1.5, 1.0])
    assert lc["high"] == pytest.approx([3.0, 3.5, 2.5, 1.5, 1.0])


# Two workloads (two compare sweeps). Per seed T = (6 - target) / rate, target = the worst final baseline loss.
SMALL = {"adamw": [0.002, 0.0025, 0.003], "muon": [0.004, 0.0045, 0.006], "lion": [0.0021] * 3}
LARGE = {"adamw": [0.002] * 3, "muon": [0.0018] * 3, "lion": [0.0024] * 3}  # muon ends at 4.2 > 4.0: unreached


def two_workloads(tmp_path: Path) -> tuple[Path, Path]:
    choice = {"adamw": 1, "muon": 1, "lion": 1}
    return make_sweep(tmp_path / "small", SMALL, choice), make_sweep(tmp_path / "large", LARGE, choice)


def test_performance_profiles_over_two_workloads(tmp_path: Path) -> None:
    small, large = two_workloads(tmp_path)
    out = tmp_path / "profile"
    assert main([str(small), str(large), "--out", str(out), "--no-plots"]) == 0
    prof = json.loads((out / "report.json").read_text())["profile"]
    # Independently: targets 6 - 0.002 x 1000 = 4.0 on both; T = 2 / rate; the median over 3 seeds.
    t_small = {"adamw": 2 / 0.0025, "muon": 2 / 0.0045, "lion": 2 / 0.0021}  # medians: 800, 444.4, 952.4
    t_large = {"adamw": 2 / 0.002, "muon": None, "lion": 2 / 0.0024}  # 1000, never, 833.3
    assert prof["workloads"] == ["small", "large"] and prof["arms"] == ["adamw", "muon", "lion"]
    for arm in t_small:
        assert prof["tokens"]["small"][arm] == pytest.approx(t_small[arm])
        assert prof["tokens"]["large"][arm] == (None if t_large[arm] is None else pytest.approx(t_large[arm]))
    ratios = {
        "adamw": {"small": 800 / (2 / 0.0045), "large": 1000 / (2 / 0.0024)},  # 1.8, 1.2
        "muon": {"small": 1.0, "large": None},  # fastest on small, never reached on large
        "lion": {"small": (2 / 0.0021) / (2 / 0.0045), "large": 1.0},  # 2.143, 1
    }
    for arm, rs in ratios.items():
        for w, r in rs.items():
            assert prof["ratios"][arm][w] == (None if r is None else pytest.approx(r))
    # ρ at τ = 1, 1.1, 1.25, 1.5, 2: the share of the 2 workloads with ratio ≤ τ (∞ never counts)
    assert prof["taus"] == [1.0, 1.1, 1.25, 1.5, 2.0]
    assert prof["rho"] == {"adamw": [0, 0, 0.5, 0.5, 1.0], "muon": [0.5] * 5, "lion": [0.5] * 5}
    md = (out / "report.md").read_text()
    assert "Performance profiles (2 workloads)" in md and "| muon | 0.5 | 0.5 | 0.5 | 0.5 | 0.5 |" in md
    assert "> budget (∞)" in md
    # each workload's own report, in its own dir, as `lmlab-report <sweep>` writes it
    for sweep in (small, large):
        own = json.loads((sweep / "report.json").read_text())
        assert own["n_jobs"] == 9 and set(own["compare"]["arms"]) == {"adamw", "muon", "lion"}


def test_workload_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small, large = two_workloads(tmp_path)
    plain = tmp_path / "plain"
    write_job(plain / "0", ["optimizer.lr=1e-3", "seed=1"], {"val/loss": 1.0, "test/bpb": 1.0, **META})
    out = str(tmp_path / "out")
    cases = [
        ([str(small), str(large)], "pass --out DIR"),
        ([str(small), str(large), "--out", str(small)], "pass --out DIR"),
        ([str(small), str(plain), "--out", out], f"{plain} hold(s) no compare.json"),
        ([str(small), str(large), "--out", out, "--target", "4.5"], "--target given 1 time(s) for 2 workloads"),
        ([str(plain), "--target", "4.5"], "needs a compare sweep"),
        ([str(small), "--target", "4.5", "--target", "4.4"], "one value for one sweep"),
    ]
    for argv, message in cases:
        assert main([*argv, "--no-plots"]) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "out").exists()
    # one --target per workload, in order
    assert main([str(small), str(large), "--out", out, "--no-plots", "--target", "5.0", "--target", "4.5"]) == 0
    prof = json.loads((tmp_path / "out" / "report.json").read_text())["profile"]
    assert prof["tokens"]["small"]["adamw"] == pytest.approx(400.0)  # median of 1/0.002, 1/0.0025, 1/0.003
    assert prof["tokens"]["large"]["muon"] == pytest.approx(1.5 / 0.0018)  # reached now


def test_compare_and_profile_html_in_chromium(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    small, large = two_workloads(tmp_path)
    out = tmp_path / "profile"
    assert main([str(small), str(large), "--out", str(out)]) == 0
    prof = json.loads((out / "report.json").read_text())
    assert prof["plots"] == ["report_profile.png"]
    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page
    assert page.count("data:image/png;base64,") == 1 and 'href="../small/report.html"' in page
    n_small = len(json.loads((small / "report.json").read_text())["plots"])
    with headless_chromium() as driver:
        driver.get((out / "report.html").as_uri())
        assert driver.title.startswith("lmlab report")
        assert loaded_images(driver)[0] > 100
        rows = driver.find_element(By.ID, "profile").find_elements(By.CSS_SELECTOR, "tbody tr")
        cells = {r.find_elements(By.TAG_NAME, "td")[0].text: [c.text for c in r.find_elements(By.TAG_NAME, "td")[1:]]
                 for r in rows}  # fmt: skip
        assert cells["adamw"] == ["0", "0", "0.5", "0.5", "1"]
        for i in (0, 1):  # each workload's arms table
            assert driver.find_element(By.ID, f"compare{i}").find_elements(By.CSS_SELECTOR, "tbody tr")
        driver.get((small / "report.html").as_uri())  # a workload's own report: stage-1 and learning curves
        widths = loaded_images(driver)
        assert len(widths) == n_small >= 5 and all(w > 100 for w in widths)
        arms = driver.find_element(By.ID, "compare").find_elements(By.CSS_SELECTOR, "tbody tr")
        assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in arms] == ["adamw", "muon", "lion"]
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
