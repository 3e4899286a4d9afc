"""TorchServe as a model tier: our store's models archived for it (``archive``), a real
TorchServe started and stopped for them (``runner``), and the front end's windows
sent to it (``backend``). The handler (``handler``) runs inside TorchServe."""
