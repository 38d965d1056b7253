"""entrykit: the container entrypoint for Python services.

Load secrets, wait for dependencies, apply migrations and prefetch model snapshots, then
exec the service's command so that it becomes PID 1.
"""

from __future__ import annotations

__version__ = "0.1.0"
