"""The quality benchmark end to end on a tiny synthetic log: runs, CSV rows, summary, plot."""

import csv
import sys
from pathlib import Path

import pytest
from synthetic import write_cycle_file

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
TINY = ["--epochs", "1", "--max-len", "8", "--dim", "16", "--layers", "1", "--batch-size", "16"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    sys.path.insert(0, str(BENCHMARKS))
    import quality_bench

    root = tmp_path_factory.mktemp("quality")
    data = write_cycle_file(root / "cycle.txt")
    argv = ["--data", data, "--peers", "1", "2", "--seeds", "0", "1", "--in-process"]
    argv += TINY + ["--threads", "1", "--runs", str(root / "runs"), "--results", str(root)]
    assert quality_bench.main(argv) == 0
    yield root, argv, quality_bench
    sys.path.remove(str(BENCHMARKS))


def _rows(root):
    with open(root / "quality.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def test_csv_rows(bench):
    root, _, quality_bench = bench
    columns, rows = _rows(root)
    assert tuple(columns) == quality_bench.COLUMNS
    test = [row for row in rows if row["split"] == "test" and row["metric"] == "ndcg@10"]
    seen = {(row["K"], row["seed"], row["protocol"], row["who"]) for row in test}
    expected = {
        (k, seed, protocol, who)
        for seed in ("0", "1")
        for protocol in ("full", "sampled")
        for k, views in (("1", ["peer0"]), ("2", ["peer0", "peer1"]))
        for who in views + ["ensemble", "peer_mean"]
    }
    assert seen == expected
    assert all(0.0 <= float(row["value"]) <= 1.0 for row in rows)
    assert {row["epochs"] for row in rows} == {"1"} and {row["data"] for row in rows} == {"cycle"}
    k2 = [r for r in test if r["K"] == "2" and r["seed"] == "0" and r["protocol"] == "full"]
    values = {row["who"]: float(row["value"]) for row in k2}
    assert values["peer_mean"] == pytest.approx((values["peer0"] + values["peer1"]) / 2, abs=1e-5)


def test_summary_and_plot(bench):
    root, _, _ = bench
    summary = (root / "quality_summary.md").read_text()
    assert "## sasrec on cycle" in summary
    assert "| default | 1 | 2 |" in summary and "| default | 2 | 2 |" in summary
    assert "- K=2 vs K=1, full ranking, peers' mean: NDCG@10" in summary
    assert (root / "quality.png").stat().st_size > 0


def test_rerun_reuses_runs_and_replaces_rows(bench):
    root, argv, quality_bench = bench
    before = _rows(root)[1]
    assert quality_bench.main(argv) == 0  # every metrics.json exists: nothing is trained
    after = _rows(root)[1]
    assert len(after) == len(before)
    assert [row["value"] for row in after] == [row["value"] for row in before]


def test_ablation_plan_switches_each_med_term(bench):
    _, _, quality_bench = bench
    args = quality_bench._parser().parse_args(["--ablation", "--seeds", "0", "1"])
    runs = quality_bench.plan(args)
    terms = {run["variant"]: run["settings"].get("med_terms") for run in runs}
    assert terms["MED target term only"] == "target" and terms["MED push term only"] == "push"
    assert terms["default"] is None and terms["alpha=1 (CE only)"] is None
    assert len(runs) == 2 * len(quality_bench.ABLATION)
    assert len({run["dir"] for run in runs}) == len(runs)


def test_each_run_command_carries_its_settings(bench):
    _, _, quality_bench = bench
    from hail_ext.cli import _parser
    from hail_ext.train.config import TrainConfig

    defaults = TrainConfig().to_dict()  # what a flag left out (a False switch) leaves
    args = quality_bench._parser().parse_args(["--ablation", "--seeds", "0", "--per-peer-items"])
    for run in quality_bench.plan(args):
        flags = ["train", "--out", "x", *quality_bench._flags(run["settings"])]
        parsed = _parser().parse_args(flags)
        for name, value in run["settings"].items():
            assert getattr(parsed, name, defaults[name]) == value, (run["variant"], name)


def test_variants_narrow_the_ablation(bench):
    _, _, quality_bench = bench
    argv = ["--ablation", "--variants", "MED push term only", "default", "--seeds", "0"]
    runs = quality_bench.plan(quality_bench._parser().parse_args(argv))
    assert [run["variant"] for run in runs] == ["default", "MED push term only"]


def test_mask_prob_is_a_setting_only_when_given(bench):
    """--mask-prob reaches the trainer and the summary's budget; runs without it keep the
    directories (settings hashes) they had before the flag existed."""
    _, argv, quality_bench = bench
    plain = quality_bench.plan(quality_bench._parser().parse_args(argv))
    masked = quality_bench.plan(
        quality_bench._parser().parse_args(argv + ["--model", "bert4rec", "--mask-prob", "0.6"])
    )
    assert all("mask_prob" not in run["settings"] for run in plain)
    assert all(run["settings"]["mask_prob"] == 0.6 for run in masked)
    assert "--mask-prob" in quality_bench._flags(masked[0]["settings"])
    row = {name: "1" for name in quality_bench.BUDGET}
    assert "mask_prob" not in quality_bench._budget({**row, "mask_prob": ""})
    assert quality_bench._budget({**row, "mask_prob": "0.6"}).endswith("mask_prob 0.6")
