"""TensorRT engines of store versions: optimisation profiles for the windows the
engine will be sent (:mod:`.profiles`), the builder (:mod:`.builder`) and the pick of
the engine built for this GPU (:mod:`.engines`). The backend that runs them is
:mod:`service.backends.tensorrt_backend`."""
