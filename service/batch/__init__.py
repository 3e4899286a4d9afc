"""``footprints batch``: a city's tiles segmented on Ray (embedded on one machine, or a
cluster given its address), resumable, with the city's footprints as one layer.

:mod:`.inputs` (which tiles), :mod:`.ledger` (what is done, for resuming),
:mod:`.worker` (one tile: mask, polygons; the model loaded once per worker),
:mod:`.layer` (the city's polygons, joined across tile edges, as a GeoPackage) and
:mod:`.run` (the driver: Ray actors, retries, progress)."""
