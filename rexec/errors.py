"""The exceptions Rexec raises.

Every message says what to do next. The hierarchy::

    RexecError
    ├── ConfigError            no stack found, bad setting, bad profile
    ├── AuthError              token refused, group not allowed
    │   └── AuthUnavailable    the identity provider could not be asked
    ├── ProtocolError          a peer spoke a different or malformed protocol
    ├── PayloadTooLarge        a message over the configured size limit
    ├── SpawnError             the spawner could not provide a worker
    │   └── WorkerLimitReached the user already has as many workers as allowed
    ├── ConnectionLost         the broker went away while a request was in flight
    ├── WorkerUnavailable      no worker is registered for this user
    │   └── WorkerDied         the worker died while running this request
    ├── CallTimeout            (also a TimeoutError) a deadline passed
    ├── CallCancelled          the request was cancelled before it finished
    └── RemoteError            user code raised and its type cannot be rebuilt here

Secrets never appear in these messages.
"""

from __future__ import annotations


class RexecError(Exception):
    """Base class of every error Rexec raises."""


class ConfigError(RexecError):
    """Settings are missing or invalid."""


class AuthError(RexecError):
    """A token was refused, or its owner is not allowed to use this service."""


class AuthUnavailable(AuthError):
    """The identity provider could not be reached or answered nonsense."""


class ProtocolError(RexecError):
    """A message did not follow the Rexec wire protocol."""


class PayloadTooLarge(RexecError):
    """A message exceeds the size limit of the broker."""


class SpawnError(RexecError):
    """The spawner could not create or report the worker."""


class WorkerLimitReached(SpawnError):
    """The user already has the most workers the spawner allows one user."""


class ConnectionLost(RexecError):
    """The connection to the broker was lost while a request was in flight."""


class WorkerUnavailable(RexecError):
    """No worker is registered for this user and worker name."""


class WorkerDied(WorkerUnavailable):
    """The worker died (or was replaced) while it ran this request."""


class CallTimeout(RexecError, TimeoutError):
    """A request did not finish before its deadline."""


class CallCancelled(RexecError):
    """A request was cancelled before it finished."""


class RemoteError(RexecError):
    """An exception raised by user code on the worker whose type is not importable here.

    ``ename`` is the remote type name, ``evalue`` its message and ``traceback`` the remote
    traceback as a list of lines.
    """

    def __init__(self, ename: str, evalue: str, traceback: list[str]) -> None:
        self.ename = ename
        self.evalue = evalue
        self.traceback = list(traceback)
        super().__init__(f"{ename}: {evalue}")

    def __str__(self) -> str:
        remote = "".join(line if line.endswith("\n") else line + "\n" for line in self.traceback)
        text = f"{self.ename}: {self.evalue}"
        return f"{text}\n\nRemote traceback:\n{remote}" if remote else text


class RemoteTraceback(Exception):
    """Attached as ``__cause__`` of a rebuilt remote exception so the remote frames show."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n\nRemote traceback:\n{self.text}"
