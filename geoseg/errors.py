"""geoseg's exception hierarchy.

Every error geoseg raises on purpose derives from :class:`GeosegError`; each subclass
also inherits the matching built-in so that callers can catch ``OSError`` or
``ValueError`` as usual. Messages say what is wrong and what to do about it; the CLI
prints them as one line and exits non-zero.
"""

from __future__ import annotations


class GeosegError(Exception):
    """Root of all errors raised by geoseg."""


class InputError(GeosegError, ValueError):
    """An input raster (or its parameters) cannot be used as given."""


class RasterReadError(GeosegError, OSError):
    """A path is missing, is not a raster, or cannot be read."""


class ModelError(GeosegError, ValueError):
    """A model name or bundle file is unknown, invalid or unsafe."""


class ContractError(ModelError):
    """A scene does not satisfy a model's input contract (bands, dtype range)."""


class OutputError(GeosegError, OSError):
    """An output cannot be written (exists, unwritable directory, ...)."""


class CatalogError(GeosegError, ValueError):
    """A batch catalog (``catalog.yaml``) is invalid; the message names file, line and field."""


class LockedError(GeosegError, OSError):
    """Another process holds the lock of a batch catalog."""
