"""Data-parallel training with two CPU processes (gloo) under torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).parent

SCRIPT = """
import sys
import torch
sys.path.insert(0, {here!r})
from synthetic import cycle_data, tiny_config
from hail_ext.train.trainer import Trainer

out = sys.argv[1]
config = tiny_config(epochs=2, batch_size=8)
# Stop where a kill would, keeping each process's own weights, then finish with --resume.
trainer = Trainer(config, out, interactions=cycle_data(), stop_after_epoch=2)
trainer.fit()
torch.save(trainer.model.state_dict(), f"{{out}}/rank{{trainer.rank}}.pt")
with open(f"{{out}}/world{{trainer.rank}}.txt", "w") as handle:
    handle.write(str(trainer.world))
Trainer(config, out, interactions=cycle_data()).fit(resume=True)
"""


def test_two_cpu_processes_stay_in_step(tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT.format(here=str(HERE)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(tmp_path / "out"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]

    out = tmp_path / "out"
    assert [(out / f"world{r}.txt").read_text() for r in (0, 1)] == ["2", "2"]
    first, second = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(first[key], second[key]) for key in first)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]["full"]) == {"peer0", "peer1", "ensemble"}
    assert len((out / "history.csv").read_text().splitlines()) == 3
