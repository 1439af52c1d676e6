"""``effdetseg benchmark``: see :mod:`effdetseg.deploy.benchmark`."""
from ..deploy.benchmark import main

__all__ = ["main"]
