"""Errors the engine raises for bad input. The CLI prints them as one line, no traceback."""


class KvsimError(Exception):
    """Base of every error caused by the user's input rather than a bug in kvsim."""


class ModelLoadError(KvsimError):
    """A model name, file or checkpoint that cannot be loaded; the message says what and where."""


class ConfigError(KvsimError, ValueError):
    """A configuration value out of range or inconsistent; the message names the field."""
