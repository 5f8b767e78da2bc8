"""Every setting of a training run, in one dataclass that is checked once and saved with it."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from hail_ext.models.peers import ENCODERS
from hail_ext.train.med_terms import MED_TERMS
from hail_ext.train.schedules import ALPHA_SCHEDULES


@dataclass
class TrainConfig:
    """A training run. Defaults follow the HAIL paper's BERT4Rec base where it gives one."""

    data: str = "nyc16"
    format: str | None = None  # "lines", "inter" or "csv"; None guesses from the file name
    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str = "timestamp"
    k_core: int = 0
    model: str = "bert4rec"
    peers: int = 2
    shared_items: bool = True
    item_bias: bool = True
    dim: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2
    max_len: int = 50
    mask_prob: float = 0.2
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.05  # fraction of all steps
    clip_norm: float = 5.0
    alpha: float = 0.5
    alpha_schedule: str = "constant"
    alpha_warmup: float = 0.1  # fraction of all steps over which alpha falls from 1 to alpha
    gamma: float = 1.0
    beta: float = 0.0
    med_terms: str = "both"  # "target" or "push" leaves the other MED term out (ablations)
    patience: int = 5  # epochs without a better validation NDCG@10 before stopping; 0 = never
    eval_batch_size: int = 256
    keep_history: bool = False
    seed: int = 0
    device: str = "cpu"
    bf16: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        positive = ("peers", "dim", "layers", "max_len", "epochs", "batch_size", "eval_batch_size")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.model not in ENCODERS:
            raise ValueError(f"model must be one of {sorted(ENCODERS)}, got {self.model!r}")
        if self.model != "gru4rec" and (self.heads < 1 or self.dim % self.heads):
            raise ValueError(f"dim ({self.dim}) must be a multiple of heads ({self.heads})")
        if self.format not in (None, "lines", "inter", "csv"):
            raise ValueError(f"format must be lines, inter, csv or None, got {self.format!r}")
        if self.alpha_schedule not in ALPHA_SCHEDULES:
            raise ValueError(
                f"alpha_schedule must be one of {ALPHA_SCHEDULES}, got {self.alpha_schedule!r}"
            )
        if self.med_terms not in MED_TERMS:
            raise ValueError(f"med_terms must be one of {MED_TERMS}, got {self.med_terms!r}")
        if self.med_terms != "both" and self.beta != 0.0:
            raise ValueError(f"med_terms={self.med_terms!r} needs beta = 0, got {self.beta}")
        _in_range("dropout", self.dropout, 0.0, 1.0, upper_open=True)
        _in_range("mask_prob", self.mask_prob, 0.0, 1.0, lower_open=True, upper_open=True)
        _in_range("warmup", self.warmup, 0.0, 1.0)
        _in_range("alpha_warmup", self.alpha_warmup, 0.0, 1.0)
        _in_range("alpha", self.alpha, 0.0, 1.0)
        _in_range("beta", self.beta, 0.0, 1.0, upper_open=True)
        _in_range("lr", self.lr, 0.0, math.inf, lower_open=True, upper_open=True)
        _in_range("gamma", self.gamma, 0.0, math.inf, lower_open=True, upper_open=True)
        _in_range("clip_norm", self.clip_norm, 0.0, math.inf, upper_open=True)
        _in_range("weight_decay", self.weight_decay, 0.0, math.inf, upper_open=True)
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ValueError(
                f"device must name a torch device such as 'cpu', 'cuda' or 'cuda:1', "
                f"got {self.device!r}"
            ) from None
        if self.k_core < 0 or self.patience < 0:
            raise ValueError(
                f"k_core and patience must be >= 0, got {self.k_core}, {self.patience}"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> TrainConfig:
        """Build from a mapping whose keys may use '-' or '_'; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        clean = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise ValueError(f"{source}: unknown setting {key!r}; known: {sorted(known)}")
            clean[name] = value
        return cls(**clean)


def read_config_file(path: str | Path) -> dict:
    """Settings from a YAML (.yaml, .yml) or TOML (.toml) file, as a flat mapping."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {path}")
    if path.suffix == ".toml":
        tomllib = _toml_reader()
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{path}: not valid TOML ({error})") from None
    elif path.suffix in (".yaml", ".yml", ".json"):
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML ({error})") from None
    else:
        raise ValueError(f"{path}: config files must end in .toml, .yaml or .yml")
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(values).__name__}")
    return values


def _toml_reader():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ValueError(
                "TOML config files need Python >= 3.11 or the tomli package; "
                "or write the config in YAML"
            ) from None
    return tomllib


def dumps(config: TrainConfig) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def _in_range(name, value, low, high, lower_open=False, upper_open=False) -> None:
    above = value > low if lower_open else value >= low
    below = value < high if upper_open else value <= high
    if isinstance(value, bool) or not isinstance(value, int | float) or not (above and below):
        left, right = "(" if lower_open else "[", ")" if upper_open else "]"
        raise ValueError(f"{name} must lie in {left}{low}, {high}{right}, got {value!r}")
