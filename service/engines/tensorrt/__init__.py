"""TensorRT engines of store versions: optimisation profiles for the windows an engine
will be sent (:mod:`.profiles`), the builder (:mod:`.builder`), which engine file runs on
this GPU (:mod:`.files`), and the engine that runs it (:mod:`.runtime`)."""
