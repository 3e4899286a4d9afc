"""Error types shared by every layer; a leaf module that imports nothing of ours."""


class InputError(ValueError):
    """Input the user must fix (a file, a flag, a request). The message says what and where.

    The CLI prints it as one line; the gRPC layer maps it to INVALID_ARGUMENT.
    """


class NotAllowed(PermissionError):
    """A request for something the server may not do for it, such as fetching a URL
    outside its allow-list (gRPC: PERMISSION_DENIED)."""


class NotFoundError(LookupError):
    """A model, version or artefact that does not exist (gRPC: NOT_FOUND)."""


class UploadStalled(TimeoutError):
    """An upload that stopped sending before its last byte (gRPC: DEADLINE_EXCEEDED);
    its tile slot and memory are given back."""


class Undecodable(ValueError):
    """Request bytes that do not parse as the method's message (gRPC: INVALID_ARGUMENT)."""


class NotReady(RuntimeError):
    """A model that is still loading, or a server that is shutting down (gRPC: UNAVAILABLE,
    which clients retry)."""


class OverBudget(Exception):
    """A tile the server's memory cannot take now (gRPC: RESOURCE_EXHAUSTED)."""
