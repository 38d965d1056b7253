"""The optional protocol clients (extras): imported when a URL needs one, never before.

A client that is not installed is a configuration error naming the extra to install, found
while the waits are prepared, before any waiting starts.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from entrykit.errors import ConfigError


def require_client(module: str, extra: str, scheme: str) -> ModuleType:
    """Import ``module`` (e.g. ``redis``) for a ``scheme://`` URL.

    Raises ConfigError saying ``pip install 'entrykit[EXTRA]'`` when it cannot be imported.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"{scheme}:// URLs need the {module} client, which is not installed: "
            f"pip install 'entrykit[{extra}]'"
        ) from None
