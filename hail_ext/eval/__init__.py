"""Evaluation: full ranking and the sampled-99 protocol, per peer and for the ensemble."""

from hail_ext.eval.evaluate import PROTOCOLS, evaluate
from hail_ext.eval.metrics import CUTOFFS, METRICS, metric_sums, target_rank
from hail_ext.eval.protocol import EvalSet, build_eval_set, sample_unseen

__all__ = [
    "CUTOFFS",
    "METRICS",
    "PROTOCOLS",
    "EvalSet",
    "build_eval_set",
    "evaluate",
    "metric_sums",
    "sample_unseen",
    "target_rank",
]
