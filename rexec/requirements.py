"""Parsing requirement lists safely: PEP 508 only, nothing that could reach a shell.

Each line must be a PEP 508 requirement (name, extras, version specifiers, markers). Option
lines (``-r``, ``--index-url``, ``-e``...), direct URLs and VCS references are refused, because
they let a requirements file point the installer anywhere. The parsed requirements are passed to
the installer as separate arguments, never through a shell.
"""

from __future__ import annotations

from dataclasses import dataclass

from packaging.requirements import InvalidRequirement, Requirement

from rexec.errors import ConfigError


class RequirementsError(ConfigError):
    """A requirements line was refused; ``line_number`` and ``line`` say which."""

    def __init__(self, line_number: int, line: str, reason: str) -> None:
        self.line_number = line_number
        self.line = line
        self.reason = reason
        super().__init__(f"requirements line {line_number} ({line!r}): {reason}")


@dataclass(frozen=True)
class ParsedRequirements:
    requirements: tuple[str, ...]

    def normalized(self) -> tuple[str, ...]:
        return tuple(sorted(self.requirements, key=str.lower))


def parse_requirements(text: str) -> ParsedRequirements:
    found: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        if line.startswith("-"):
            raise RequirementsError(
                number, line, "installer options are not allowed; list package requirements only"
            )
        try:
            requirement = Requirement(line)
        except InvalidRequirement as exc:
            raise RequirementsError(number, line, f"not a valid requirement: {exc}") from None
        if requirement.url:
            raise RequirementsError(
                number, line, "direct URLs and VCS references are not allowed; name a package"
            )
        found.append(str(requirement))
    return ParsedRequirements(tuple(found))
