"""The loss benchmark end to end on its smoke preset: CSV rows, Markdown table and plot."""

import csv
import itertools
import os
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
COLUMNS = {"provider", "mode", "K", "N", "d", "V", "dtype", "metric", "unit", "value"}
COLUMNS |= {"status", "device", "machine", "version", "date", "run_id"}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    sys.path.insert(0, str(BENCHMARKS))
    import loss_bench

    out = tmp_path_factory.mktemp("bench") / "loss.csv"
    assert loss_bench.main(["--preset", "smoke", "--out", str(out)]) == 0
    yield out, loss_bench
    sys.path.remove(str(BENCHMARKS))


def test_smoke_rows(smoke_run):
    out, loss_bench = smoke_run
    with open(out, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert COLUMNS <= set(reader.fieldnames)

    bu = loss_bench.bu
    preset = loss_bench.PRESETS["smoke"]
    grid = loss_bench.points(preset["grids"])
    expected = {
        (p, mode, point.K, metric)
        for point, p, mode in itertools.product(grid, preset["providers"], bu.MODES)
        if bu.applies(p, point)
        for metric, _unit in bu.metrics(p, mode)
    }
    seen = [(r["provider"], r["mode"], int(r["K"]), r["metric"]) for r in rows]
    assert sorted(seen) == sorted(expected)  # each figure exactly once

    bad = [r for r in rows if r["status"] != "ok"]
    assert not bad, bad[:3]
    errors = [float(r["value"]) for r in rows if r["metric"].startswith("rel_err")]
    assert errors and max(errors) <= bu.TOLERANCE["float32"]
    assert all(float(r["value"]) > 0 for r in rows if r["metric"].startswith("time_"))
    assert len({r["run_id"] for r in rows}) == 1 and "cores" in rows[0]["machine"]


def test_smoke_table_and_plot(smoke_run):
    out, _ = smoke_run
    import loss_table
    import plot_loss

    table = loss_table.markdown(loss_table.read_run(out))
    assert "| fused |" in table and "| floor |" in table and "1.00x" in table

    png = out.with_suffix(".png")
    assert plot_loss.main([str(out), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_failed_and_missing_rows_are_kept(smoke_run):
    """A provider that times out or is too big still has a row per figure, with its status."""
    _, loss_bench = smoke_run
    point = loss_bench.bu.Point(1, 8, 4, 10, "float32")
    records = [
        {
            "provider": "fused",
            "mode": None,
            "metric": "rel_err_loss",
            "value": 1e-9,
            "unit": "rel",
            "status": "ok",
        },
        {
            "provider": "fused",
            "mode": "forward",
            "metric": None,
            "value": None,
            "unit": "",
            "status": "timeout",
        },
    ]
    rows = loss_bench.complete(
        point,
        ["fused", "reference"],
        list(loss_bench.bu.MODES),
        records,
        "failed",
        too_big=["reference"],
    )
    status = {(r["provider"], r["mode"], r["metric"]): r["status"] for r in rows}
    assert status["fused", "forward", "rel_err_loss"] == "ok"
    assert status["fused", "forward", "time_p50"] == "timeout"
    assert status["fused", "forward+backward", "time_p50"] == "failed"  # never reported
    assert {s for (p, _, _), s in status.items() if p == "reference"} == {"oom"}


def test_triton_providers_run_only_on_cuda_and_k1(smoke_run):
    """Cut Cross-Entropy and Liger are CUDA-only cross-entropies: never planned on the CPU."""
    _, loss_bench = smoke_run
    bu = loss_bench.bu
    k1, k2 = bu.Point(1, 8, 4, 10, "float32"), bu.Point(2, 8, 4, 10, "float32")
    for name in bu.CUDA_ONLY:
        assert not bu.applies(name, k1, "cpu")
        assert bu.applies(name, k1, "cuda") and bu.applies(name, k1, "cuda:1")
        assert not bu.applies(name, k2, "cuda")
    args = loss_bench.parse_args(["--preset", "smoke"])
    (planned,) = loss_bench._groups(args, k1)  # the smoke preset: one process per point
    assert "fused" in planned and not set(bu.CUDA_ONLY) & set(planned)

    gpu = loss_bench.parse_args(["--preset", "gpu", "--device", "cuda"])
    grid = loss_bench.points(gpu.grids)
    assert bu.Point(1, 16384, 2048, 256_000, "bfloat16") in grid
    assert {"cce", "liger", "fused"} <= set(gpu.providers) and gpu.point_timeout == 240.0


def test_dtype_ab_alternates_and_records_every_call(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import dtype_ab

    out = tmp_path / "ab.csv"
    argv = ["--rounds", "2", "--point", "2", "64", "8", "300", "--csv", str(out)]
    assert dtype_ab.main(argv) == 0
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    # Two rounds of A B B A: four calls of each dtype, every one its own row.
    assert sorted(row["dtype"] for row in rows) == ["bfloat16"] * 4 + ["float32"] * 4
    assert all(float(row["seconds"]) > 0 and row["K"] == "2" for row in rows)
    assert "ratio: p20" in capsys.readouterr().out


def test_dtype_ab_pairs_the_two_product_paths(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import dtype_ab

    monkeypatch.delenv("HAIL_CPU_BF16_PRODUCTS", raising=False)
    out = tmp_path / "ab.csv"
    argv = ["--pair", "products", "--rounds", "1", "--point", "1", "32", "8", "100"]
    assert dtype_ab.main([*argv, "--csv", str(out)]) == 0
    with open(out, newline="") as handle:
        labels = sorted(row["dtype"] for row in csv.DictReader(handle))
    assert labels == ["bf16-f32-products"] * 2 + ["bf16-products"] * 2
    assert "HAIL_CPU_BF16_PRODUCTS" not in os.environ  # each call's setting is undone
    assert "ratio: p20" in capsys.readouterr().out


def test_dtype_ab_refuses_peers_for_a_k1_provider(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import dtype_ab

    with pytest.raises(SystemExit):
        dtype_ab.parse_args(["--provider", "torch_ce", "--point", "2", "64", "8", "300"])
    with pytest.raises(SystemExit):
        dtype_ab.parse_args(["--pair", "torch_ce", "--point", "2", "64", "8", "300"])
