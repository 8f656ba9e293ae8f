"""Online-KD methods, one file each, registered by name in `METHODS`, in the PCL paper's order."""

# isort: off
from methods import vanilla, dml, cl, one, okddip, kdcl, ffl_s, pcl, kd, switokd, mcl, okdph, alone  # noqa: F401, I001  (registers)
# isort: on
from methods.base import METHODS, NoOptions, OnlineKDMethod, Progress, build_method, register_method, resolve_options

PAPER_ORDER = ["vanilla", "dml", "cl", "one", "okddip", "kdcl", "ffl_s", "pcl"]

__all__ = ["METHODS", "PAPER_ORDER", "NoOptions", "OnlineKDMethod", "Progress", "build_method", "register_method",
           "resolve_options"]
