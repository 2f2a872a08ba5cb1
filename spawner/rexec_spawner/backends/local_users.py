"""Who the local backend serves: one user, unless the operator accepts several unisolated ones.

Every local worker runs as the spawner's OS user, so the code in one worker can read whatever
any other can: other workers' credential files, the signing key, the token file and the profile
of whoever started the spawner. Users of one local backend are therefore not isolated from each
other. The backend serves one user unless the operator lists several in ``REXEC_LOCAL_USERS``,
which accepts exactly that; the Kubernetes backend is the one that isolates users.

Without a list, the first user who creates a worker becomes the owner. The owner is recorded in
``<data dir>/local-owner.json`` (0600), so a restarted spawner keeps serving the same user; delete
that file to hand the backend to whoever creates a worker next.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from rexec.errors import ConfigError
from rexec_spawner.backends.base import UserNotServed

log = logging.getLogger(__name__)

OWNER_FILE = "local-owner.json"
MAX_OWNER_FILE_BYTES = 64 * 1024
_RISK = (
    "it runs every worker as one OS user, so workers of different users could read each "
    "other's credentials"
)


class LocalUsers:
    """The users one local backend serves: those listed, or else its first user only."""

    def __init__(self, data_dir: Path, listed: Sequence[str] = ()) -> None:
        self.listed = tuple(dict.fromkeys(listed))
        self.owner_path = Path(data_dir) / OWNER_FILE
        # With a list the file plays no part: the operator said who is served.
        self.owner = None if self.listed else _read_owner(self.owner_path)
        if len(self.listed) > 1:
            log.warning(
                "the local backend serves %d users (%s) who are NOT isolated from each other: "
                "every worker runs as this spawner's OS user, so one user's worker can read the "
                "credentials of the others' workers and act as them. Use the Kubernetes backend "
                "to isolate users, or list a single user in REXEC_LOCAL_USERS",
                len(self.listed),
                ", ".join(repr(user) for user in self.listed),
            )
        elif self.owner is not None:
            log.info("the local backend serves only the user %r (%s)", self.owner, self.owner_path)

    def admit(self, user: str, *, claim: bool = False) -> None:
        """Return if this backend serves ``user``, else raise :class:`UserNotServed`.

        With ``claim`` (creating a worker), a backend that has no owner yet becomes ``user``'s.
        Without it, a user may look while there is no owner: there is nothing of others to see.
        """
        if self.listed:
            if user in self.listed:
                return
            raise UserNotServed(self._refusal(self.listed, "REXEC_LOCAL_USERS"))
        if self.owner is None:
            if not claim:
                return
            self.owner = _claim(self.owner_path, user)
            log.info(
                "the local backend now serves only the user %r, its first; recorded in %s",
                self.owner,
                self.owner_path,
            )
        if user != self.owner:
            raise UserNotServed(self._refusal((self.owner,), None))

    @staticmethod
    def _refusal(served: Sequence[str], setting: str | None) -> str:
        names = ", ".join(repr(user) for user in served[:3])
        if len(served) > 3:
            names += f" and {len(served) - 3} more"
        who = f"the user {names}" if len(served) == 1 else f"the users {names}"
        if setting is None:
            fix = "list them in REXEC_LOCAL_USERS to accept that risk"
        else:
            who += f" ({setting})"
            fix = "ask the operator to add you to REXEC_LOCAL_USERS, accepting that risk"
        return (
            f"this spawner's local backend serves only {who}: {_RISK}. Use the Kubernetes "
            f"backend for several users, or {fix}"
        )


def _read_owner(path: Path) -> str | None:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_OWNER_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}; fix its permissions") from None
    try:
        owner = json.loads(data.decode("utf-8")).get("user")
    except (ValueError, AttributeError, RecursionError):
        owner = None
    if not isinstance(owner, str) or not owner or len(data) > MAX_OWNER_FILE_BYTES:
        raise ConfigError(
            f"{path} does not name the user this local backend serves; delete it to let the next "
            "user who creates a worker own the backend, or set REXEC_LOCAL_USERS"
        )
    return owner


def _claim(path: Path, user: str) -> str:
    """Record ``user`` as the owner unless someone already is; returns the owner."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Written in full under a private name, then linked into place: the link fails if the file
    # exists, so two spawners sharing the data directory cannot both claim it, and a crash
    # never leaves a half-written owner behind.
    draft = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(json.dumps({"user": user}).encode())
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(draft, path)
        except FileExistsError:
            existing = _read_owner(path)
            assert existing is not None
            return existing
    finally:
        draft.unlink(missing_ok=True)
    return user
