"""Iterating a generator that runs on the worker, one item per ``next``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from rexec.client.outputs import OutputHandler

if TYPE_CHECKING:
    from rexec.client.session import Session


class RemoteGenerator(Iterator[Any]):
    """Iterates a generator running on the worker; each item is fetched as you iterate."""

    def __init__(
        self, session: Session, request_id: str, timeout: float | None, output: OutputHandler
    ) -> None:
        self._session = session
        self._id = request_id
        self._timeout = timeout
        self._output = output
        self._done = False
        self.value: Any = None

    def __iter__(self) -> RemoteGenerator:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration(self.value)
        try:
            more, value = self._session._generator_step(self._id, self._timeout, self._output)
        except BaseException:
            self._done = True
            raise
        if more:
            return value
        self._done = True
        self.value = value
        raise StopIteration(value)

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._session._close_generator(self._id)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
