"""The trainer: learning, reproducibility, resume, checkpoints, schedules, options."""

import json

import pytest
import torch
from synthetic import cycle_data, tiny_config

import hail_ext
from hail_ext.train import checkpoint
from hail_ext.train.config import TrainConfig, read_config_file
from hail_ext.train.schedules import alpha_at, lr_factor
from hail_ext.train.trainer import Trainer, load_data


def _fit(tmp_path, name="run", resume=False, stop=None, loss_fn=None, **overrides):
    options = {} if loss_fn is None else {"loss_fn": loss_fn}
    trainer = Trainer(
        tiny_config(**overrides),
        tmp_path / name,
        interactions=cycle_data(),
        stop_after_epoch=stop,
        **options,
    )
    return trainer, trainer.fit(resume=resume)


def _weights(path):
    return checkpoint.load(path)["model"]


# Settings under which each encoder learns the cycle within a few dozen steps on 2 CPU cores.
LEARNS = [
    pytest.param("sasrec", {"epochs": 4, "lr": 1e-2}, 0.8, id="sasrec"),
    pytest.param("gru4rec", {"epochs": 10, "lr": 2e-2}, 0.8, id="gru4rec", marks=pytest.mark.slow),
    pytest.param(
        "bert4rec",
        {"epochs": 30, "lr": 5e-3, "mask_prob": 0.4, "batch_size": 4},
        0.6,
        id="bert4rec",
        marks=[
            pytest.mark.slow,
            pytest.mark.xfail(
                reason=(
                    "measured: ensemble NDCG@10 0.45 (K=2, 30 epochs); cloze training needs "
                    "more steps than this budget"
                ),
                strict=True,
            ),
        ],
    ),
]


@pytest.mark.parametrize("model, settings, least", LEARNS)
def test_training_learns_a_predictable_sequence(tmp_path, model, settings, least):
    settings = {"batch_size": 8, **settings}
    trainer, metrics = _fit(
        tmp_path,
        model=model,
        peers=2,
        patience=0,
        keep_history=True,
        dropout=0.0,
        warmup=0.0,
        **settings,
    )
    ndcg = metrics["test"]["full"]["ensemble"]["ndcg@10"]
    assert ndcg > least  # a random ranking of 12 items scores about 0.3
    history = trainer.history_rows
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_outputs_and_metrics_layout(tmp_path):
    _, metrics = _fit(tmp_path, peers=2)
    out = tmp_path / "run"
    for name in (
        "metrics.json",
        "history.csv",
        "learning_curve.png",
        "best.pt",
        "checkpoint.pt",
        "train.log",
    ):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved) == {"test", "valid", "config"}
    assert set(saved["test"]) == {"full", "sampled"}
    assert set(saved["test"]["full"]) == {"peer0", "peer1", "ensemble"}
    keys = {f"{m}@{k}" for m in ("hr", "ndcg", "mrr") for k in (1, 5, 10, 20)}
    assert set(saved["valid"]["sampled"]["ensemble"]) == keys
    assert saved["config"]["peers"] == 2
    lines = (out / "history.csv").read_text().splitlines()
    assert len(lines) == 3 and "valid_ndcg@10_ensemble" in lines[0]
    assert not list(out.glob(".*tmp*"))


def test_single_network_uses_the_same_path(tmp_path):
    _, metrics = _fit(tmp_path, peers=1, epochs=1)
    assert set(metrics["test"]["full"]) == {"peer0", "ensemble"}
    assert metrics["test"]["full"]["peer0"] == metrics["test"]["full"]["ensemble"]


def test_same_seed_same_run_other_seed_other_run(tmp_path):
    _fit(tmp_path, "a", epochs=1)
    _fit(tmp_path, "b", epochs=1)
    _fit(tmp_path, "c", epochs=1, seed=5)
    a, b, c = (_weights(tmp_path / n / "checkpoint.pt") for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("model", ["sasrec", "bert4rec"])
def test_resume_after_a_kill_reaches_the_same_result(tmp_path, model):
    _, straight = _fit(tmp_path, "straight", model=model, epochs=3)
    _, partial = _fit(tmp_path, "killed", model=model, epochs=3, stop=1)
    assert partial == {}
    _, resumed = _fit(tmp_path, "killed", model=model, epochs=3, resume=True)
    assert resumed["test"] == straight["test"]
    one, two = (_weights(tmp_path / n / "checkpoint.pt") for n in ("straight", "killed"))
    assert all(torch.equal(one[k], two[k]) for k in one)
    history = (tmp_path / "killed" / "history.csv").read_text().splitlines()
    assert len(history) == 4


def test_resume_refuses_other_settings(tmp_path):
    _fit(tmp_path, epochs=1)
    with pytest.raises(ValueError, match=r"other settings for \['lr'\]"):
        _fit(tmp_path, epochs=1, lr=1e-2, resume=True)


def test_early_stopping_on_validation_ndcg(tmp_path):
    trainer, _ = _fit(tmp_path, epochs=6, patience=2, lr=1e-12)
    # Nothing is learnt at this rate: the first epoch stays best and 2 more end the run.
    assert len(trainer.history_rows) == 3


def test_reference_loss_gives_the_same_training(tmp_path):
    def reference(hidden, weight, target, **options):
        return hail_ext.reference.med_loss(hidden, weight, target, **options), None

    _, fused = _fit(tmp_path, "fused", epochs=1)
    _, slow = _fit(tmp_path, "reference", epochs=1, loss_fn=reference)
    ensemble = fused["valid"]["full"]["ensemble"]
    assert slow["valid"]["full"]["ensemble"] == pytest.approx(ensemble, abs=0.02)
    saved = [checkpoint.load(tmp_path / n / "checkpoint.pt") for n in ("fused", "reference")]
    losses = [state["history"][0]["train_loss"] for state in saved]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    # Adam divides by the gradients' scale, so rounding differences grow a little per step.
    for key in saved[0]["model"]:
        torch.testing.assert_close(
            saved[0]["model"][key], saved[1]["model"][key], rtol=0, atol=2e-3
        )


def test_options_bf16_per_peer_tables_beta_and_alpha_schedule(tmp_path):
    _, metrics = _fit(
        tmp_path,
        epochs=1,
        bf16=True,
        shared_items=False,
        beta=0.1,
        alpha_schedule="linear",
        peers=3,
    )
    assert set(metrics["test"]["full"]) == {"peer0", "peer1", "peer2", "ensemble"}
    assert all(v == v for v in metrics["test"]["full"]["ensemble"].values())  # no NaN


@pytest.mark.parametrize("terms", ["target", "push"])
def test_med_terms_train_through_the_config(tmp_path, terms):
    trainer, metrics = _fit(tmp_path, epochs=1, med_terms=terms)
    assert trainer.loss_fn.__qualname__.startswith("med_terms_loss")
    assert metrics["config"]["med_terms"] == terms
    assert all(v == v for v in metrics["test"]["full"]["ensemble"].values())  # no NaN


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    checkpoint.save({"value": torch.tensor([1.0])}, path)

    def broken_save(obj, handle):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save({"value": torch.tensor([2.0])}, path)
    monkeypatch.undo()
    assert checkpoint.load(path)["value"].item() == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a hail_ext checkpoint"):
        checkpoint.load(tmp_path / "other.pt")


def test_schedules():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10) == 0.0
    assert alpha_at(0, 10, 0.5, "constant") == 0.5
    for schedule in ("linear", "cosine"):
        assert alpha_at(0, 10, 0.5, schedule) == 1.0
        assert alpha_at(10, 10, 0.5, schedule) == 0.5
        assert 0.5 < alpha_at(5, 10, 0.5, schedule) < 1.0
    assert alpha_at(5, 10, 0.5, "linear") == pytest.approx(0.75)


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"peers": 0}, "peers must be"),
        ({"model": "bert"}, "model must be one of"),
        ({"alpha": 1.5}, r"alpha must lie in \[0.0, 1.0\]"),
        ({"beta": 1.0}, "beta must lie"),
        ({"dim": 10, "heads": 4}, "multiple of heads"),
        ({"alpha_schedule": "step"}, "alpha_sch"),
        ({"lr": float("nan")}, r"lr must lie in \(0.0, inf\), got nan"),
        ({"gamma": 0.0}, r"gamma must lie in \(0.0, inf\), got 0.0"),
        ({"clip_norm": float("inf")}, r"clip_norm must lie in \[0.0, inf\), got inf"),
        ({"weight_decay": -0.1}, "weight_decay must lie"),
        ({"device": "gpu"}, "device must name a torch device .* got 'gpu'"),
    ],
)
def test_config_rejects_bad_settings(settings, words):
    with pytest.raises(ValueError, match=words):
        TrainConfig(**settings)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_training_on_a_missing_gpu_says_so(tmp_path):
    trainer = Trainer(TrainConfig(device="cuda", epochs=1), tmp_path)
    with pytest.raises(
        ValueError, match="device 'cuda': this torch .* (was built without CUDA|sees no GPU)"
    ):
        trainer.fit()


def test_unknown_data_names_the_built_in_sets():
    with pytest.raises(
        FileNotFoundError, match=r"data 'nyc61': no such file, nor a built-in \(nyc16"
    ):
        load_data(TrainConfig(data="nyc61"))


def test_config_files(tmp_path):
    (tmp_path / "a.yaml").write_text("model: gru4rec\nmax-len: 30\n")
    (tmp_path / "a.toml").write_text('model = "sasrec"\npeers = 3\n')
    assert read_config_file(tmp_path / "a.yaml") == {"model": "gru4rec", "max-len": 30}
    config = TrainConfig.from_dict(read_config_file(tmp_path / "a.toml"))
    assert (config.model, config.peers) == ("sasrec", 3)
    with pytest.raises(ValueError, match="unknown setting 'epoch'"):
        TrainConfig.from_dict({"epoch": 3})
    (tmp_path / "bad.yaml").write_text("- a list\n")
    with pytest.raises(ValueError, match="bad.yaml: expected a mapping"):
        read_config_file(tmp_path / "bad.yaml")
