from ..service.conftest import store  # noqa: F401  (the small exported models)
