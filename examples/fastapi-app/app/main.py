"""The example API, started by entrykit after its steps: `entrykit uvicorn app.main:app`.

By the time this module is imported, entrykit has loaded the secrets, waited for the database,
migrated it (or waited for the migration Job) and made sure the models are in the Hugging Face
cache, so the routes below can assume all three.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from app import db

app = FastAPI(title="entrykit example")


@app.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process serves requests (what `entrykit healthcheck` asks)."""
    return {"status": "ok"}


@app.get("/readyz")
def readyz() -> dict[str, Any]:
    """Readiness: the database answers and is migrated."""
    try:
        revision = db.schema_revision()
    except Exception as error:
        raise HTTPException(503, f"database unavailable: {type(error).__name__}") from None
    if revision is None:
        raise HTTPException(503, "database not migrated")
    return {"status": "ready", "revision": revision}


@app.get("/models")
def models() -> dict[str, Any]:
    """The repos in the Hugging Face cache: what entrykit prefetched (or the image baked in)."""
    from huggingface_hub import constants, scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        cache = scan_cache_dir()
    except CacheNotFound:
        repos = []
    else:
        repos = [
            {
                "repo_id": repo.repo_id,
                "repo_type": repo.repo_type,
                "size_on_disk": repo.size_on_disk,
                "revisions": sorted(
                    (
                        {
                            "commit": rev.commit_hash,
                            "refs": sorted(rev.refs),
                            "files": sorted(f.file_name for f in rev.files),
                        }
                        for rev in repo.revisions
                    ),
                    key=lambda rev: rev["commit"],
                ),
            }
            for repo in sorted(cache.repos, key=lambda repo: (repo.repo_type, repo.repo_id))
        ]
    return {
        "cache": constants.HF_HUB_CACHE,
        "offline": constants.HF_HUB_OFFLINE,
        "models": repos,
    }


@app.get("/models/{owner}/{name}/files/{filename:path}")
def model_file(owner: str, name: str, filename: str) -> dict[str, Any]:
    """Resolve one file the way `from_pretrained` does, from the cache only."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = hf_hub_download(f"{owner}/{name}", filename, local_files_only=True)
    except LocalEntryNotFoundError:
        raise HTTPException(404, f"{owner}/{name}: {filename} is not in the cache") from None
    return {"repo_id": f"{owner}/{name}", "filename": filename, "bytes": os.path.getsize(path)}


class NewNote(BaseModel):
    body: str


@app.get("/notes")
def notes(limit: int = 100) -> dict[str, Any]:
    """The rows of the notes table the migrations created, and the worker's progress."""
    try:
        return {"table": db.TABLE, "rows": db.read_rows(limit), "jobs": db.job_counts()}
    except LookupError as error:
        raise HTTPException(503, str(error)) from None


@app.post("/notes", status_code=201)
def add_note(note: NewNote) -> dict[str, Any]:
    """Store a note; the worker picks up the job queued with it."""
    try:
        return db.add_note(note.body)
    except LookupError as error:
        raise HTTPException(503, str(error)) from None
