"""``python -m effdetseg`` (and ``torchrun … -m effdetseg train``)."""
import sys

from .cli import main

sys.exit(main())
