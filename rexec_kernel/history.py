"""The kernel's input history: what ``history_request`` answers (tail, range, search).

>>> history = CellHistory()
>>> history.add(1, "x = 1")
>>> history.add(2, "print(x)")
>>> history.tail(1)
[(0, 2, 'print(x)')]
>>> history.search("x =*")
[(0, 1, 'x = 1')]
"""

from __future__ import annotations

import fnmatch

Entry = tuple[int, int, str]


class CellHistory:
    """Cells run in this kernel session, as ``(session, line_number, source)`` entries."""

    def __init__(self) -> None:
        self._entries: list[Entry] = []

    def add(self, execution_count: int, source: str) -> None:
        self._entries.append((0, execution_count, source))

    def tail(self, n: int | None) -> list[Entry]:
        return list(self._entries[-n:]) if n else list(self._entries)

    def range(self, start: int | None, stop: int | None) -> list[Entry]:
        low, high = start or 0, stop
        return [e for e in self._entries if e[1] >= low and (high is None or e[1] < high)]

    def search(
        self, pattern: str | None, n: int | None = None, unique: bool = False
    ) -> list[Entry]:
        found = [e for e in self._entries if fnmatch.fnmatchcase(e[2], pattern or "*")]
        if unique:
            seen: set[str] = set()
            kept = []
            for entry in reversed(found):
                if entry[2] not in seen:
                    seen.add(entry[2])
                    kept.append(entry)
            found = kept[::-1]
        return found[-n:] if n else found
