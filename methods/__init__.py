"""Online-KD methods, one file each, registered by name in `METHODS` (paper order)."""

from methods import cl, dml, okddip, one, pcl, vanilla  # noqa: F401  (registers the methods)
from methods.base import METHODS, OnlineKDMethod, Progress, build_method, register_method, resolve_options

PAPER_ORDER = ["vanilla", "dml", "cl", "one", "okddip", "kdcl", "ffl_s", "pcl"]

__all__ = ["METHODS", "PAPER_ORDER", "OnlineKDMethod", "Progress", "build_method", "register_method",
           "resolve_options"]
