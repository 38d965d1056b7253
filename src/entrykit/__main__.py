"""``python -m entrykit`` is the ``entrykit`` command."""

from entrykit.cli import main

main()
