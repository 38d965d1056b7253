"""The app's initial data: a welcome note (and its job), created on the first start.

Run by entrykit after the migrations and before the server starts, as a start-up command with
``once = true`` (entrykit.toml): replicas that start together take turns under the
cross-replica lock ``initial-data``. The check-then-insert below is only safe that way: two
replicas running it at the same moment would both find no welcome note and both create one.
That is the shape of the FastAPI template's ``initial_data.py`` (create the first superuser
unless there is one), which crashed 7 times in 18 when six replicas ran it at once.

The note's text comes from ``WELCOME_NOTE`` (it could come from a secret file, as entrykit
loads those first); without it there is nothing to create.

    WELCOME_NOTE="Hello" python -m app.initial_data
"""

from __future__ import annotations

import os

from app import db


def create_initial_data(text: str | None) -> str:
    """Create the welcome note ``text`` unless it exists; say what was done."""
    if not text:
        return "WELCOME_NOTE is not set: no initial data to create"
    with db.connect() as conn:
        found = conn.one("SELECT id FROM notes WHERE body = %s", (text,))
        if found is not None:
            return f"welcome note already there (note {found['id']})"
        note = conn.one("INSERT INTO notes (body) VALUES (%s) RETURNING id", (text,))
        assert note is not None
        conn.run("INSERT INTO jobs (note_id) VALUES (%s)", (note["id"],))
        return f"created the welcome note (note {note['id']})"


if __name__ == "__main__":
    print(create_initial_data(os.environ.get("WELCOME_NOTE")), flush=True)
