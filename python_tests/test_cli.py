"""The `hail` command end to end, on a tiny log."""

import dataclasses
import json
import subprocess
import sys

import pytest
from synthetic import write_cycle_file

from hail_ext.cli import _parser, main
from hail_ext.train import trainer
from hail_ext.train.config import TrainConfig

TINY = [
    "--model",
    "sasrec",
    "--peers",
    "2",
    "--epochs",
    "1",
    "--max-len",
    "6",
    "--dim",
    "8",
    "--batch-size",
    "32",
    "--no-progress",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = write_cycle_file(root / "log.txt")
    config = root / "run.yaml"
    config.write_text("layers: 1\nseed: 4\nepochs: 5\nalpha: 0.3\n")
    out = root / "run"
    code = main(["train", "--data", data, "--out", str(out), "--config", str(config), *TINY])
    return code, data, out


def test_train_writes_the_run_and_flags_override_the_config(trained, capsys):
    code, _, out = trained
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["epochs"] == 1  # the flag beat the file's 5
    assert (metrics["config"]["seed"], metrics["config"]["alpha"]) == (4, 0.3)
    assert set(metrics["test"]["full"]) == {"peer0", "peer1", "ensemble"}
    assert set(metrics["valid"]) == {"full", "sampled"}
    for name in ("history.csv", "learning_curve.png", "best.pt", "train.log"):
        assert (out / name).is_file()


def test_every_train_flag_is_a_setting():
    train = _parser()._subparsers._group_actions[0].choices["train"]
    dests = {action.dest for action in train._actions} - {"help", "out", "config", "resume"}
    assert dests <= {field.name for field in dataclasses.fields(TrainConfig)}


def test_train_flags_reach_the_trainer(tmp_path, monkeypatch):
    seen = {}

    class Recorder:
        def __init__(self, config, out_dir):
            seen["config"] = config

        def fit(self, resume):
            return None

    monkeypatch.setattr(trainer, "Trainer", Recorder)
    flags = ["--med-terms", "push", "--gamma", "2", "--alpha-schedule", "linear", "--bf16"]
    assert main(["train", "--data", "nyc16", "--out", str(tmp_path), *flags]) == 0
    config = seen["config"]
    assert (config.med_terms, config.gamma, config.alpha_schedule) == ("push", 2.0, "linear")
    assert config.bf16 is True


def test_evaluate_reproduces_the_training_metrics(trained, tmp_path, capsys):
    _, data, out = trained
    code = main(
        ["evaluate", "--checkpoint", str(out / "best.pt"), "--data", data, "--out", str(tmp_path)]
    )
    assert code == 0
    again = json.loads((tmp_path / "metrics.json").read_text())
    first = json.loads((out / "metrics.json").read_text())
    assert again["test"] == first["test"] and again["valid"] == first["valid"]
    table = capsys.readouterr().out
    assert "ensemble" in table and "ndcg@10" in table


def test_evaluate_switches_history_filtering_either_way(trained, tmp_path):
    _, data, out = trained
    runs = {}
    for flag in ("--keep-history", "--no-keep-history"):
        where = tmp_path / flag
        argv = ["evaluate", "--checkpoint", str(out / "best.pt"), "--data", data]
        assert main([*argv, "--out", str(where), flag]) == 0
        runs[flag] = json.loads((where / "metrics.json").read_text())
    assert runs["--keep-history"]["config"]["keep_history"] is True
    assert runs["--no-keep-history"]["config"]["keep_history"] is False
    # The model was trained with filtering, so --no-keep-history reproduces its metrics.
    first = json.loads((out / "metrics.json").read_text())
    assert runs["--no-keep-history"]["test"] == first["test"]


def test_evaluate_refuses_other_data(trained, tmp_path, capsys):
    _, _, out = trained
    other = write_cycle_file(tmp_path / "other.txt", num_items=9)
    code = main(["evaluate", "--checkpoint", str(out / "best.pt"), "--data", other])
    assert code == 2
    assert "item ids differ" in capsys.readouterr().err


def test_malformed_data_is_reported_with_its_line(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2\n1 3\n1 three\n")
    code = main(["train", "--data", str(bad), "--out", str(tmp_path / "o"), *TINY])
    assert code == 2
    assert "bad.txt, line 3: an integer item id, got 'three'" in capsys.readouterr().err


def test_python_dash_m_runs_the_same_command():
    result = subprocess.run(
        [sys.executable, "-m", "hail_ext", "train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0
    for flag in (
        "--data",
        "--model",
        "--peers",
        "--epochs",
        "--max-len",
        "--out",
        "--seed",
        "--alpha",
        "--gamma",
        "--beta",
        "--batch-size",
        "--dim",
        "--lr",
        "--device",
        "--config",
        "--resume",
    ):
        assert flag in result.stdout
