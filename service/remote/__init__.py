"""The remote model tier: other ``footprints serve`` processes' ``InferWindows`` (and
TorchServe), health-checked, with failover (:mod:`.servers`). Failover policy lives here
and nowhere else."""
