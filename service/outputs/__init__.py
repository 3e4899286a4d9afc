"""What the pipeline's rows become: GeoTIFFs and mask planes (:mod:`.sinks`), building
polygons (:mod:`.polygons`), overlays (:mod:`.overlay`), and ``segment`` of one file
(:mod:`.segment`)."""
