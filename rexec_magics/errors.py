"""How a failed remote cell is raised locally: short, with the remote traceback only."""

from __future__ import annotations

from rexec.errors import RemoteError


class RemoteCellError(RemoteError):
    """A ``%%rexec`` cell raised on the worker. IPython shows the remote traceback (not the
    frames of the magic) so "run all" stops at this cell with the error that matters.

    >>> err = RemoteCellError("ValueError", "bad", ["Traceback...", "ValueError: bad"])
    >>> err._render_traceback_()[-1]
    'ValueError: bad'
    """

    def _render_traceback_(self) -> list[str]:
        return list(self.traceback) or [f"{self.ename}: {self.evalue}"]
