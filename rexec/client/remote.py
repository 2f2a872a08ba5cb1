"""``remote_func``: run a decorated function on the user's worker.

Usage::

    from rexec import remote_func

    @remote_func
    def collatz_steps(n): ...

    @remote_func(timeout=30)
    def slow(x): ...

    collatz_steps(27)                 # runs remotely, returns the result
    future = slow.submit(3)           # a concurrent.futures.Future

Without an explicit ``session=``, functions share one process-wide default session built from
the connection profile and environment (``rexec up`` writes the profile). The reference docs'
setters — ``remote_func().set_remote_addr(host)``, ``.set_remote_port(port)``,
``.set_exec_token(token)``, ``.set_api_url(url)`` — override the profile for that default
session; explicit sessions (``rexec.connect(...)``) are independent of them.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from rexec.client.session import Session
from rexec.profile import load_profile


class _Defaults:
    """Overrides set through the reference API, and the default session they configure."""

    def __init__(self) -> None:
        self.host: str | None = None
        self.port: str | None = None
        self.token: str | None = None
        self.spawner_url: str | None = None
        self._session: Session | None = None
        self._lock = threading.Lock()

    def update(self, **fields: Any) -> None:
        with self._lock:
            for key, value in fields.items():
                setattr(self, key, value)
            session, self._session = self._session, None
        if session is not None:
            session.close()

    def session(self) -> Session:
        with self._lock:
            if self._session is None or self._session._closed:
                self._session = Session(load_profile(**self._overrides()))
            return self._session

    def _overrides(self) -> dict[str, Any]:
        broker_url = None
        if self.host:
            host = self.host if "://" in self.host else f"tcp://{self.host}"
            broker_url = f"{host}:{self.port or 5559}" if self.port or host.count(":") < 2 else host
        return {"broker_url": broker_url, "token": self.token, "spawner_url": self.spawner_url}

    def reset(self) -> None:
        self.update(host=None, port=None, token=None, spawner_url=None)


defaults = _Defaults()


def default_session() -> Session:
    """The process-wide session used by ``remote_func`` without ``session=``."""
    return defaults.session()


class RemoteFunction:
    """A function that runs on the worker when called."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        timeout: float | None = None,
        session: Session | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"remote_func needs a function, got {type(fn).__name__}")
        self.__rexec_function__ = fn
        self._timeout = timeout
        self._session = session
        functools.update_wrapper(self, fn)

    @property
    def session(self) -> Session:
        return self._session or default_session()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.session.call(self.__rexec_function__, args, kwargs, timeout=self._timeout)

    def submit(self, *args: Any, **kwargs: Any) -> Future[Any]:
        """Start the call and return at once with a ``concurrent.futures.Future``."""
        return self.session.submit(self.__rexec_function__, *args, **kwargs)

    def local(self, *args: Any, **kwargs: Any) -> Any:
        """Run the undecorated function here, in this process."""
        return self.__rexec_function__(*args, **kwargs)

    def __reduce__(self) -> Any:
        # Shipped inside another function (recursion, helpers): the worker gets the plain function.
        return (_identity, (self.__rexec_function__,))

    def __repr__(self) -> str:
        return f"<remote function {getattr(self, '__qualname__', '?')}>"


def _identity(value: Any) -> Any:
    return value


class _RemoteFuncFactory:
    """What ``remote_func()`` returns: a decorator that also carries the reference API setters."""

    def __init__(self, timeout: float | None, session: Session | None) -> None:
        self._timeout = timeout
        self._session = session

    def __call__(self, fn: Callable[..., Any]) -> RemoteFunction:
        return RemoteFunction(fn, timeout=self._timeout, session=self._session)

    def set_remote_addr(self, host: str) -> _RemoteFuncFactory:
        defaults.update(host=str(host))
        return self

    def set_remote_port(self, port: int | str) -> _RemoteFuncFactory:
        defaults.update(port=str(port))
        return self

    def set_exec_token(self, token: str) -> _RemoteFuncFactory:
        defaults.update(token=token)
        return self

    def set_api_url(self, url: str) -> _RemoteFuncFactory:
        defaults.update(spawner_url=url)
        return self

    def set_environment(self, requirements_file: str, token: str | None = None) -> Any:
        """Give the worker the packages in ``requirements_file`` (``token``: None means the
        connection profile's). Built once per set and reused; the worker restarts into it, so
        its variables are gone. Raises ``RequirementsError`` naming a refused line, and
        ``EnvironmentBuildError`` with pip's message. See ``rexec.client.environment``."""
        from rexec.client.environment import set_environment

        if token is not None:
            defaults.update(token=token)
        return set_environment(default_session(), requirements_file)


def remote_func(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    timeout: float | None = None,
    session: Session | None = None,
) -> Any:
    """Decorate ``fn`` to run on the worker; ``@remote_func`` or ``@remote_func(timeout=...)``."""
    if fn is None:
        return _RemoteFuncFactory(timeout, session)
    if inspect.isclass(fn):
        raise TypeError("remote_func decorates functions, not classes")
    return RemoteFunction(fn, timeout=timeout, session=session)
