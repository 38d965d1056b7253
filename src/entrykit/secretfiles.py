"""Secrets from files into the environment, as docs/reference.md describes.

Named ``secretfiles`` so that it never shadows the standard library's ``secrets``.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from entrykit.errors import ConfigError, SecretError
from entrykit.logs import add_secret, add_url_secrets
from entrykit.settings import Settings

MAX_SECRET_BYTES = 64 * 1024
HUB_TOKEN = "HF_TOKEN"
HUB_TOKEN_FILES = ("hf_token", "huggingface_token", "HF_TOKEN")

_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

log = logging.getLogger("entrykit.secrets")


class SecretEntry(NamedTuple):
    """One ``ENTRYKIT_SECRETS`` entry: ``VAR``, ``VAR=FILE`` or ``VAR?``."""

    variable: str
    file: str | None = None
    optional: bool = False

    @classmethod
    def parse(cls, text: str) -> SecretEntry:
        """Parse an entry; raises ConfigError for a bad variable or file name."""
        entry = text.strip()
        optional = entry.endswith("?")
        entry = entry.removesuffix("?")
        variable, sep, file = entry.partition("=")
        variable, file = variable.strip(), file.strip()
        if not _VARIABLE.match(variable):
            raise ConfigError(f"ENTRYKIT_SECRETS: {variable!r} is not a variable name")
        if sep:
            _check_plain_name(file, variable)
        return cls(variable, file if sep else None, optional)


class LoadedSecret(NamedTuple):
    """A secret ready for the environment. ``source`` is a path, or ``env``."""

    name: str
    source: str
    value: str

    def __repr__(self) -> str:  # never show the value, even in a debugger or traceback
        return f"LoadedSecret(name={self.name!r}, source={self.source!r}, length={self.length})"

    @property
    def length(self) -> int:
        """The value's length in bytes, which is all `secrets` and `plan` show."""
        return len(self.value.encode())


class SecretSet(NamedTuple):
    """What the secrets step found: values to set, and ``*_FILE`` variables to drop."""

    secrets: tuple[LoadedSecret, ...]
    consumed: tuple[str, ...]

    def apply(self, environ: dict[str, str]) -> None:
        """Put the secrets into ``environ`` and take the consumed ``*_FILE`` variables out."""
        for name in self.consumed:
            environ.pop(name, None)
        for secret in self.secrets:
            environ[secret.name] = secret.value


def load_secrets(settings: Settings) -> SecretSet:
    """Read every configured secret and the Hub token; register the values for redaction.

    Raises SecretError (missing, too big, not UTF-8, NUL byte, outside the folder, or both
    ``VAR`` and ``VAR_FILE`` set) and ConfigError (bad entry).
    """
    environ = settings.environ
    folder = settings.resolve(settings.secrets_dir)
    loaded: dict[str, LoadedSecret] = {}
    consumed: list[str] = []
    for entry in _entries(settings.secrets, folder):
        secret = _load_entry(entry, environ, folder, consumed)
        if secret is not None:
            loaded[secret.name] = secret
    if HUB_TOKEN not in loaded:
        token = _nonempty_hub_token(_discover_hub_token(environ, folder, consumed))
        if token is not None:
            loaded[HUB_TOKEN] = token
    for secret in loaded.values():
        add_secret(secret.value)
        add_url_secrets(secret.value)  # a URL secret (REDIS_URL): its password alone too
        if not secret.value:
            log.warning("secret %s from %s is empty", secret.name, secret.source)
    return SecretSet(tuple(loaded.values()), tuple(consumed))


def _nonempty_hub_token(token: LoadedSecret | None) -> LoadedSecret | None:
    """An empty token file means anonymous Hub access, as intended: no token, no warning."""
    if token is not None and not token.value:
        log.debug("%s from %s is empty: anonymous Hub access", HUB_TOKEN, token.source)
        return None
    return token


def _entries(raw_entries: tuple[str, ...], folder: Path) -> list[SecretEntry]:
    entries: list[SecretEntry] = []
    for raw in raw_entries:
        if raw.strip() == "*":
            entries += [SecretEntry(_variable_for(name), name) for name in _top_files(folder)]
        else:
            entries.append(SecretEntry.parse(raw))
    return entries


def _load_entry(
    entry: SecretEntry, environ: Mapping[str, str], folder: Path, consumed: list[str]
) -> LoadedSecret | None:
    variable = entry.variable
    file_variable = f"{variable}_FILE"
    if environ.get(file_variable):
        if variable in environ:
            raise SecretError(f"both {variable} and {file_variable} are set; unset one of them")
        consumed.append(file_variable)
        path = Path(environ[file_variable])
        return LoadedSecret(variable, str(path), _read_secret(path, variable))
    if entry.file is not None:
        return _load_from_folder(variable, folder, [entry.file], entry.optional)
    if variable in environ:
        return LoadedSecret(variable, "env", environ[variable])
    return _load_from_folder(variable, folder, [variable, variable.lower()], entry.optional)


def _load_from_folder(
    variable: str, folder: Path, names: list[str], optional: bool
) -> LoadedSecret | None:
    tried = [folder / name for name in dict.fromkeys(names)]
    for path in tried:
        if os.path.lexists(path):
            _check_inside(path, folder, variable)
            return LoadedSecret(variable, str(path), _read_secret(path, variable))
    if optional:
        log.debug("optional secret %s not found", variable)
        return None
    paths = ", ".join(str(path) for path in tried)
    raise SecretError(
        f"secret {variable} not found: set {variable} or {variable}_FILE, or create {paths}"
    )


def _discover_hub_token(
    environ: Mapping[str, str], folder: Path, consumed: list[str]
) -> LoadedSecret | None:
    """The Hub token when HF_TOKEN is unset: HF_TOKEN_FILE, then the usual secret files."""
    if environ.get(HUB_TOKEN):
        return None
    token_file = environ.get(f"{HUB_TOKEN}_FILE")
    if token_file:
        consumed.append(f"{HUB_TOKEN}_FILE")
        return LoadedSecret(HUB_TOKEN, token_file, _read_secret(Path(token_file), HUB_TOKEN))
    for name in HUB_TOKEN_FILES:
        path = folder / name
        if os.path.lexists(path):
            _check_inside(path, folder, HUB_TOKEN)
            return LoadedSecret(HUB_TOKEN, str(path), _read_secret(path, HUB_TOKEN))
    return None


def _read_secret(path: Path, variable: str) -> str:
    """A secret file's text less its trailing newlines; SecretError names the file only.

    Never blocks: a path that is not a regular file once links are followed (a FIFO, a
    device, a socket, a folder) is refused before it is opened, and the open itself does not
    wait for a FIFO's writer should one be swapped in meanwhile.
    """
    try:
        _check_regular(os.stat(path), path, variable)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        with open(fd, "rb") as file:
            _check_regular(os.fstat(fd), path, variable)
            data = file.read(MAX_SECRET_BYTES + 1)
    except FileNotFoundError:
        raise SecretError(f"secret {variable}: {path} does not exist") from None
    except PermissionError:
        raise SecretError(f"secret {variable}: {_permission_denied(path)}") from None
    except OSError as error:
        raise SecretError(f"secret {variable}: cannot read {path}: {error.strerror}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise SecretError(f"secret {variable}: {path} is larger than 64 KiB")
    if b"\0" in data:
        raise SecretError(f"secret {variable}: {path} holds a NUL byte")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError(f"secret {variable}: {path} is not UTF-8 text") from None
    while text.endswith("\n"):
        text = text.removesuffix("\n").removesuffix("\r")
    return text


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _check_regular(info: os.stat_result, path: Path, variable: str) -> None:
    if stat.S_ISREG(info.st_mode):
        return
    kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "not a file")
    raise SecretError(f"secret {variable}: {path} is {kind}, not a regular file")


def _permission_denied(path: Path) -> str:
    """Why ``path`` cannot be read: its mode and owner, who we are, and what would do."""
    uid = os.geteuid()
    me = f"uid {uid}" + (f" ({name})" if (name := _user_name(uid)) else "")
    try:
        info = os.stat(path)
    except OSError:  # a folder on the way is closed to us
        return f"permission denied reaching {path}: entrykit runs as {me}"
    owner = f"uid {info.st_uid}" + (f" ({name})" if (name := _user_name(info.st_uid)) else "")
    mode = stat.S_IMODE(info.st_mode)
    return (
        f"permission denied reading {path} (mode {mode:04o}, owner {owner}, gid "
        f"{info.st_gid}): entrykit runs as {me}; make the file readable by it "
        f"(mode 0644, or owned by uid {uid})"
    )


def _user_name(uid: int) -> str | None:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _check_inside(path: Path, folder: Path, variable: str) -> None:
    """A file found in the secrets folder must resolve inside it (links are followed)."""
    real_folder = os.path.realpath(folder)
    real_path = os.path.realpath(path)
    if os.path.commonpath([real_folder, real_path]) != real_folder:
        raise SecretError(f"secret {variable}: {path} links outside {folder}; refusing to read it")


def _check_plain_name(file: str, variable: str) -> None:
    if not file or "/" in file or "\0" in file or file.startswith("."):
        raise ConfigError(
            f"ENTRYKIT_SECRETS: {variable}={file!r}: the file must be a plain name inside "
            "the secrets folder (no '/', '..' or leading '.')"
        )


def _top_files(folder: Path) -> list[str]:
    """Regular files at the top of the folder, skipping dot names and sub-folders."""
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        raise SecretError(f"ENTRYKIT_SECRETS=*: the folder {folder} does not exist") from None
    except OSError as error:
        raise SecretError(f"ENTRYKIT_SECRETS=*: cannot list {folder}: {error.strerror}") from None
    return [name for name in names if not name.startswith(".") and (folder / name).is_file()]


def _variable_for(file_name: str) -> str:
    return re.sub(r"[^A-Z0-9_]", "_", file_name.upper())
