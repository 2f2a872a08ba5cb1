"""The Rexec IPython magics: ``%%rexec``, ``%rexec``, ``%rexec_status``, ``%rexec_connect``,
``%rexec_push``, ``%rexec_pull`` and ``%rexec_env``.

Each magic parses its arguments and hands off to the default session
(``rexec.client.remote.default_session()``), the one ``@remote_func`` uses, so cells and
functions run on the same worker::

    In [1]: %load_ext rexec_magics

    In [2]: %%rexec
       ...: import os
       ...: print("on the worker", os.getpid())

    In [3]: %rexec_push data          # copy a local variable to the worker
    In [4]: %rexec result = sum(data)
    In [5]: %rexec_pull result        # and the result back
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from rexec.client.outputs import OutputHandler
from rexec.client.session import Session
from rexec.errors import ConfigError, RexecError
from rexec_magics.errors import RemoteCellError
from rexec_magics.status import tracks_activity
from rexec_magics.view import LiveCellView, PlainOutput


def default_session() -> Session:
    """The session shared with ``@remote_func``; raises ``UsageError`` saying how to fix it."""
    from rexec.client.remote import default_session as shared

    try:
        return shared()
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def connected_session() -> Session:
    session = default_session()
    try:
        return session.connect()
    except RexecError as exc:
        raise UsageError(f"cannot reach the Rexec stack: {exc}") from None


def describe_worker(session: Session) -> str:
    info = session.worker_info or {}
    where = f"pid {info['pid']} on {info.get('host', '?')}" if info.get("pid") else "offline"
    return f"{session.profile.worker} ({where})"


@magics_class
class RexecMagics(Magics):
    """Run cells on your Rexec worker from any IPython kernel."""

    @property
    def _user_ns(self) -> dict[str, Any]:
        assert self.shell is not None
        namespace: dict[str, Any] = self.shell.user_ns
        return namespace

    @magic_arguments()
    @argument("--timeout", type=float, default=None, help="cancel the cell after SECONDS")
    @argument(
        "--quiet",
        "-q",
        action="store_true",
        help="plain streamed output instead of the live widget (scripts, nbconvert)",
    )
    @line_cell_magic
    @tracks_activity
    def rexec(self, line: str, cell: str | None = None) -> None:
        """Run code on the worker, in its persistent namespace.

        ``%rexec CODE`` runs one line with plain output (the options are for the cell magic).
        As a cell magic, output streams live into a widget with the worker, state and elapsed
        time; ``--quiet`` prints plainly instead. A remote exception is raised here with the
        remote traceback::

            In [1]: %%rexec --timeout 600
               ...: train(model)

            In [2]: %rexec print(len(data))
        """
        if cell is None:
            # The line magic's whole line is code (argument parsing would mangle quotes).
            code, timeout, quiet = line, None, True
        else:
            args = parse_argstring(self.rexec, line)
            code, timeout, quiet = cell, args.timeout, args.quiet
        if not code.strip():
            raise UsageError("nothing to run: write `%rexec CODE` or a `%%rexec` cell")
        session = connected_session()
        live = not quiet and _widgets_available()
        view = LiveCellView(describe_worker(session)) if live else None
        handler: OutputHandler = view if view is not None else PlainOutput()
        if view is not None:
            view.show()
            view.set_state("running")
        state = "failed"
        try:
            reply = session.execute(code, timeout=timeout, output=handler)
            state = "done" if reply.get("status") == "ok" else "failed"
        except KeyboardInterrupt:
            state = "interrupted"
            raise
        except RexecError as exc:
            state = type(exc).__name__
            raise UsageError(str(exc)) from None
        finally:
            if view is not None:
                view.finish(state)
        if reply.get("status") == "error":
            raise RemoteCellError(
                str(reply.get("ename", "Exception")),
                str(reply.get("evalue", "")),
                [str(line) for line in reply.get("traceback") or []],
            )
        if reply.get("status") == "aborted":
            raise KeyboardInterrupt("the remote cell was cancelled")

    @line_magic
    def rexec_status(self, line: str = "") -> None:
        """Show where the stack is, who you are and the worker's state::

        In [1]: %rexec_status
        """
        session = default_session()
        print(f"stack:  {session.profile.describe()}")
        try:
            session.connect()
        except RexecError as exc:
            print(f"state:  not connected: {exc}")
            return
        info = session.worker_info or {}
        print(f"user:   {session.user}")
        print(f"worker: {describe_worker(session)}")
        if info:
            print(f"python: {info.get('python')} (rexec {info.get('rexec')})")
            print(f"env:    {info.get('env_id', 'base')}")
        for warning in session.skew_warnings:
            print(f"warning: {warning}")

    @magic_arguments()
    @argument("--spawner-url", help="the spawner's base URL")
    @argument("--broker-url", help="the broker's frontend address, e.g. tcp://host:5559")
    @argument("--token", help="the token to authenticate with")
    @argument("--worker", help="the worker name (default: default)")
    @argument("--profile", help="a connection profile file (as `rexec up` writes)")
    @line_magic
    def rexec_connect(self, line: str) -> None:
        """Point this kernel (``%%rexec`` and ``@remote_func``) at another stack, then connect::

        In [1]: %rexec_connect --spawner-url http://rexec.example.org --token $TOKEN
        """
        import os

        from rexec.client.remote import defaults

        args = parse_argstring(self.rexec_connect, line)
        if args.profile:
            if not Path(args.profile).expanduser().exists():
                raise UsageError(f"no profile at {args.profile}; run `rexec up` or check the path")
            os.environ["REXEC_PROFILE"] = args.profile
        if args.worker:
            os.environ["REXEC_WORKER"] = args.worker
        changes: dict[str, Any] = {}
        if args.spawner_url:
            changes["spawner_url"] = args.spawner_url
        if args.token:
            changes["token"] = args.token
        if args.broker_url:
            changes.update(host=args.broker_url, port=None)
        defaults.update(**changes)
        session = connected_session()
        print(f"connected to {session.profile.describe()} as {session.user}")
        print(f"worker: {describe_worker(session)}")

    @line_magic
    def rexec_push(self, line: str) -> None:
        """Copy local variables into the worker's namespace::

        In [1]: %rexec_push data params
        """
        names = _names(line, "%rexec_push a b")
        missing = [name for name in names if name not in self._user_ns]
        if missing:
            raise UsageError(f"not defined here: {', '.join(missing)}; define them first")
        from rexec_magics.namespace import assign_names

        values = {name: self._user_ns[name] for name in names}
        _call(assign_names, values)

    @line_magic
    def rexec_pull(self, line: str) -> None:
        """Copy variables from the worker's namespace into this one::

        In [1]: %rexec_pull result
        """
        names = _names(line, "%rexec_pull x y")
        from rexec_magics.namespace import fetch_names

        found, missing = _call(fetch_names, names)
        if missing:
            raise UsageError(
                f"not defined on the worker: {', '.join(missing)}; check with `%rexec print(dir())`"
            )
        self._user_ns.update(found)

    @magic_arguments()
    @argument("--quiet", "-q", action="store_true", help="plain output instead of a widget")
    @argument("--reset", action="store_true", help="go back to the worker's base environment")
    @argument("requirements", nargs="*", help="a requirements file, or requirement specs")
    @line_magic
    @tracks_activity
    def rexec_env(self, line: str) -> None:
        """Give the worker these packages: built once per set (pip, from an argument list, never
        a shell), reused afterwards; the worker restarts into it and its variables are gone::

            In [1]: %rexec_env requirements.txt
            In [2]: %rexec_env "numpy>=1.26" "pandas<3"
            In [3]: %rexec_env --reset
        """
        from rexec.client.environment import EnvironmentBuildError, apply_requirements
        from rexec.requirements import RequirementsError

        args = parse_argstring(self.rexec_env, line)
        try:
            # IPython's argument splitting keeps quotes; quoting protects `<` and `>` here.
            given = shlex.split(" ".join(args.requirements))
        except ValueError as exc:
            raise UsageError(f"cannot split the requirements ({exc}); check the quotes") from None
        if args.reset:
            text = ""
        elif not given:
            raise UsageError("write `%rexec_env requirements.txt`, specs, or `%rexec_env --reset`")
        elif len(given) == 1 and (
            Path(given[0]).expanduser().is_file() or given[0].endswith(".txt")
        ):
            path = Path(given[0]).expanduser()
            try:
                text = path.read_text()
            except OSError as exc:
                raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        else:
            text = "\n".join(given)
        # Checked by the spawner (with the operator's policy) or, without one, by the client.
        shown = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
        if not shown and not args.reset:
            raise UsageError(f"no requirements in {given[0]}; list one package per line")
        session = connected_session()
        view = None
        if not args.quiet and _widgets_available():
            view = LiveCellView(describe_worker(session), title="environment")
            view.show()
            view.set_state("setting up " + (", ".join(shown) or "the base environment"))
        state = "failed"
        try:
            result = apply_requirements(session, text, output=view or PlainOutput())
            state = {
                "active": "already active",
                "built": "installed",
                "cached": "installed (cached)",
            }.get(result["status"], result["status"])
        except (RequirementsError, EnvironmentBuildError) as exc:
            raise UsageError(str(exc)) from None
        except RexecError as exc:
            raise UsageError(f"cannot set the environment: {exc}") from None
        finally:
            if view is not None:
                view.finish(state)


def _names(line: str, example: str) -> list[str]:
    names = shlex.split(line)
    bad = [name for name in names if not name.isidentifier()]
    if not names or bad:
        what = f"not variable names: {', '.join(bad)}" if bad else "no variable names given"
        raise UsageError(f"{what}; write e.g. `{example}`")
    return names


def _call(fn: Any, *args: Any) -> Any:
    try:
        return connected_session().call(fn, args)
    except RexecError as exc:
        raise UsageError(str(exc)) from None


def _widgets_available() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None
