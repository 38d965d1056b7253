"""The app's initial data: the first superuser, created on the first start.

Run by entrykit after the migrations and before the server starts, as a start-up command with
``once = true`` (entrykit.toml): replicas that start together take turns under the
cross-replica lock ``initial-data``. The check-then-insert below is only safe that way: two
replicas running it at the same moment would both find no user with that e-mail, both insert
one, and the second would crash on the unique index ``ix_user_email``. That is the FastAPI
template's ``initial_data.py`` (create the first superuser unless there is one), which crashed
7 times in 18 when six replicas ran it at once.

The e-mail comes from ``FIRST_SUPERUSER``, the password from ``FIRST_SUPERUSER_PASSWORD``,
which entrykit loads from the secret file ``first_superuser_password`` (so the password is in
no image, compose file or log line). Without ``FIRST_SUPERUSER`` there is nothing to create.
The password is stored as a salted scrypt hash, ``scrypt$n=N,r=R,p=P$SALT$HASH`` (base64).

    FIRST_SUPERUSER=admin@example.com entrykit run -- uvicorn app.main:app
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import sys

from app import db

# Django's ScryptPasswordHasher's cost: 16 MiB and some 50 ms a hash.
_SCRYPT_COST = {"n": 2**14, "r": 8, "p": 1}


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p)


def hash_password(password: str) -> str:
    """``password`` hashed with a random salt, as ``scrypt$n=N,r=R,p=P$SALT$HASH``."""
    salt = secrets.token_bytes(16)
    params = ",".join(f"{name}={value}" for name, value in _SCRYPT_COST.items())
    digest = _scrypt(password, salt, **_SCRYPT_COST)
    return "$".join(
        ["scrypt", params, base64.b64encode(salt).decode(), base64.b64encode(digest).decode()]
    )


def verify_password(password: str, hashed: str) -> bool:
    """Whether ``hashed`` (from :func:`hash_password`) was made of ``password``.

    Raises ValueError when ``hashed`` is not of that form.
    """
    scheme, params, salt, digest = hashed.split("$")
    if scheme != "scrypt":
        return False
    cost = {name: int(value) for name, value in (pair.split("=") for pair in params.split(","))}
    computed = _scrypt(password, base64.b64decode(salt), **cost)
    return hmac.compare_digest(computed, base64.b64decode(digest))


def create_first_superuser(email: str | None, password: str | None) -> str:
    """Create the superuser ``email`` unless a user with that e-mail exists; say what was done.

    Raises ValueError when ``email`` comes without a password.
    """
    if not email:
        return "FIRST_SUPERUSER is not set: no first superuser to create"
    if not password:
        raise ValueError(
            f"FIRST_SUPERUSER is {email} but FIRST_SUPERUSER_PASSWORD is not set:"
            " put the password in the secret file first_superuser_password"
        )
    with db.connect() as conn:
        found = conn.one("SELECT id FROM users WHERE email = %s", (email,))
        if found is not None:
            return f"first superuser {email} already there (user {found['id']})"
        user = conn.one(
            "INSERT INTO users (email, hashed_password, is_superuser) VALUES (%s, %s, %s)"
            " RETURNING id",
            (email, hash_password(password), True),
        )
        assert user is not None
        return f"created the first superuser {email} (user {user['id']})"


def main() -> int:
    try:
        done = create_first_superuser(
            os.environ.get("FIRST_SUPERUSER"), os.environ.get("FIRST_SUPERUSER_PASSWORD")
        )
    except ValueError as error:
        print(error, file=sys.stderr, flush=True)
        return 1
    print(done, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
