"""okd-bench: a benchmarking harness for online knowledge distillation."""

__version__ = "0.1.0"
