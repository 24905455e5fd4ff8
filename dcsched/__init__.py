"""dcsched: a GPU-cluster monitor and job scheduler."""

__version__ = "0.1.0"
