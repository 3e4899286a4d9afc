"""Offline training, export and evaluation (``footprints`` train, publish, export, loao, ...)."""

import os

# MKL's reproducible mode, pinned before torch loads MKL (this package is imported first by
# every training command): without it about one coarse-views run in 30 differed from its
# repeats in a fresh process, with it 90 of 90 agreed, at no measured cost a step (0.71 s
# either way on the v3 recipe). docs/models.md has the measurements. setdefault: a caller's
# own choice stays.
os.environ.setdefault("MKL_CBWR", "COMPATIBLE")
os.environ.setdefault("MKL_DYNAMIC", "FALSE")
