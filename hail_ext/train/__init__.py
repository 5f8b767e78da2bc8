"""Training K peers with the HAIL loss: configuration, schedules, checkpoints, the trainer."""

from hail_ext.train.config import TrainConfig, read_config_file
from hail_ext.train.trainer import Trainer, build_model, load_data

__all__ = ["TrainConfig", "Trainer", "build_model", "load_data", "read_config_file"]
