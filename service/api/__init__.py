"""The gRPC service: the server (:mod:`.server`: lifecycle, health, hot reload), the
servicer (:mod:`.servicer`) and what it leans on: admission of tiles (:mod:`.admission`),
uploads (:mod:`.upload`), messages (:mod:`.convert`), the engine-thread bridge
(:mod:`.bridge`), status codes (:mod:`.status`), tolerant parsing (:mod:`.handlers`),
security (:mod:`.security`) and the call log (:mod:`.logs`)."""
