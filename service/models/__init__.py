"""Models a server has loaded: the manager that keeps them in step with the store
(:mod:`.manager`), the registry every call looks them up in (:mod:`.registry`), each
model's batcher (:mod:`.batcher`) and the window memory they share (:mod:`.budget`)."""
