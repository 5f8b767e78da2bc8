"""hail_ext: the fused HAIL loss (Hu et al., CIKM 2021) and a trainer for sequential recommenders.

The loss of K peer encoders over the whole item catalogue, with mutual exclusivity distillation,
computed in sweeps over item tiles so that the `[K, N, V]` logits are never held.
"""

from hail_ext import reference
from hail_ext._ops import _C
from hail_ext._ops import IMPORT_ERROR as _IMPORT_ERROR
from hail_ext.loss import MEDStats, linear_cross_entropy, med_loss, med_loss_with_stats
from hail_ext.modules import LinearCrossEntropy, MEDLoss
from hail_ext.options import MEDOptions

__version__ = "0.1.0"

__all__ = [
    "LinearCrossEntropy",
    "MEDLoss",
    "MEDOptions",
    "MEDStats",
    "build_info",
    "linear_cross_entropy",
    "med_loss",
    "med_loss_with_stats",
    "reference",
]


def build_info() -> dict:
    """How the extension was built: version, torch version, whether CUDA kernels were compiled
    (`cuda`, `cuda_archs`), the CPU instruction set of the sweeps in use (`cpu_isa`) and whether
    bfloat16 inputs reach the CPU products unconverted (`cpu_bf16_products`).
    Without a compiled extension: `{"version": ..., "compiled": False, "error": ...}`."""
    if _C is None:
        return {
            "version": __version__,
            "compiled": False,
            "cuda": False,
            "cpu_isa": None,
            "cpu_bf16_products": False,
            "error": str(_IMPORT_ERROR),
        }
    return {"compiled": True, **_C.build_info()}
