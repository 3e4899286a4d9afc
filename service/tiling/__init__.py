"""Tiling, in numpy alone: how a model is cut into windows (:mod:`.geometry`), the
window plans (:mod:`.plans`), stitching (:mod:`.stitch`), the engine that runs a raster
through a model (:mod:`.engine`) and the tile pipeline into row sinks (:mod:`.pipeline`)."""
