"""Parsing requirement lists safely: PEP 508 only, nothing that could reach a shell.

Each line must be a PEP 508 requirement (name, extras, version specifiers, markers), kept exactly
as written (``numpy>=1.26``, ``pandas<3``, ``pkg[extra]; python_version > "3.8"``). Option lines
(``-r``, ``--index-url``, ``-e``...), direct URLs and VCS references are refused unless the
operator allows them (``RequirementsPolicy``), because they let a requirements file point the
installer anywhere. Whatever is accepted is passed to the installer as separate arguments, never
through a shell.

An environment is identified by :func:`environment_id`: a hash of the normalized requirement
list and the Python minor version, so the same set on the same Python is built once and reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from packaging.requirements import InvalidRequirement, Requirement

from rexec.errors import ConfigError

BASE_ENVIRONMENT = "base"
ALLOW_OPTIONS_ENV = "REXEC_ENV_ALLOW_OPTIONS"
ALLOW_URLS_ENV = "REXEC_ENV_ALLOW_URLS"
ENV_ID_LENGTH = 16
# The installer options an operator may allow; each takes its value as written on the line.
ALLOWED_OPTIONS = frozenset(
    {
        "--index-url",
        "-i",
        "--extra-index-url",
        "--trusted-host",
        "--find-links",
        "-f",
        "--pre",
        "--no-binary",
        "--only-binary",
        "--prefer-binary",
    }
)
_VCS_PREFIXES = ("git+", "hg+", "svn+", "bzr+")
_URL_RE = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
# Characters with no meaning in a PEP 508 requirement but plenty in a shell. Requirements never
# reach a shell; a line holding them is a mistake or an attack either way.
_UNSAFE_CHARS = frozenset("$`|&\\{}")
_QUOTED_RE = re.compile(r"""(["'])(.*?)\1""")
_SAFE_MARKER_VALUE_RE = re.compile(r"^[A-Za-z0-9 ._*+!=<>~,-]*$")


class RequirementsError(ConfigError):
    """A requirements line was refused; ``line_number``, ``line`` and ``reason`` say which."""

    def __init__(self, line_number: int, line: str, reason: str) -> None:
        self.line_number = line_number
        self.line = line
        self.reason = reason
        super().__init__(f"requirements line {line_number} ({line!r}): {reason}")


@dataclass(frozen=True)
class RequirementsPolicy:
    """What an operator allows beyond plain PEP 508 requirements (both off by default)."""

    allow_options: bool = False
    allow_urls: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RequirementsPolicy:
        """From ``REXEC_ENV_ALLOW_OPTIONS`` / ``REXEC_ENV_ALLOW_URLS`` (``1``/``true``/``yes``)."""
        source = os.environ if env is None else env
        return cls(
            allow_options=env_flag(source.get(ALLOW_OPTIONS_ENV)),
            allow_urls=env_flag(source.get(ALLOW_URLS_ENV)),
        )

    def worker_variables(self) -> dict[str, str]:
        """What a worker needs to apply the same policy when it re-checks requirements."""
        return {
            ALLOW_OPTIONS_ENV: "1" if self.allow_options else "0",
            ALLOW_URLS_ENV: "1" if self.allow_urls else "0",
        }


def env_flag(value: str | None) -> bool:
    """True for ``1``, ``true``, ``yes`` or ``on`` (any case)."""
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class ParsedRequirements:
    """Accepted lines, in file order: requirements as written, and allowed option lines."""

    requirements: tuple[str, ...]
    options: tuple[str, ...] = ()

    def normalized(self) -> tuple[str, ...]:
        """The order-independent form hashed into the environment id."""
        reqs = sorted({_normalize(line) for line in self.requirements})
        return (*sorted(set(self.options)), *reqs)

    def lines(self) -> list[str]:
        """Options first, then requirements: what the installer and the worker receive."""
        return [*self.options, *self.requirements]

    def installer_arguments(self) -> list[str]:
        """The argument list for ``pip install``: options split into words, then ``--`` and the
        requirements, so no requirement can be read as an option."""
        words: list[str] = []
        for option in self.options:
            words.extend(shlex.split(option))
        return [*words, "--", *self.requirements] if self.requirements else words


def _normalize(line: str) -> str:
    requirement = Requirement(line)
    requirement.name = re.sub(r"[-_.]+", "-", requirement.name).lower()
    return str(requirement)


def _strip_comment(raw: str) -> str:
    stripped = raw.strip()
    if stripped.startswith("#"):
        return ""
    return re.split(r"\s+#", stripped, maxsplit=1)[0].strip()


def parse_requirements(
    text: str | Iterable[str], policy: RequirementsPolicy | None = None
) -> ParsedRequirements:
    """Check every line of a requirements file (text, or a list of lines).

    Raises :class:`RequirementsError` naming the first refused line, its number and the reason.
    """
    policy = policy or RequirementsPolicy()
    lines = text.splitlines() if isinstance(text, str) else [str(line) for line in text]
    found: list[str] = []
    options: list[str] = []
    for number, raw in enumerate(lines, start=1):
        if "\n" in raw or "\r" in raw or "\x00" in raw:
            raise RequirementsError(number, raw[:80], "a line must not contain line breaks")
        line = _strip_comment(raw)
        if not line:
            continue
        if line.startswith("-"):
            options.append(_check_option(number, line, policy))
            continue
        if _URL_RE.match(line) or line.startswith(_VCS_PREFIXES):
            if not policy.allow_urls:
                raise RequirementsError(
                    number, line, "direct URLs and VCS references are not allowed; name a package"
                )
            found.append(line)
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement as exc:
            reason = str(exc).splitlines()[0]
            raise RequirementsError(number, line, f"not a valid requirement: {reason}") from None
        _check_characters(number, line)
        if requirement.url and not policy.allow_urls:
            raise RequirementsError(
                number, line, "direct URLs and VCS references are not allowed; name a package"
            )
        found.append(line)
    return ParsedRequirements(tuple(found), tuple(options))


def _check_characters(number: int, line: str) -> None:
    unsafe = sorted(set(line) & _UNSAFE_CHARS)
    if unsafe:
        raise RequirementsError(
            number, line, f"characters {' '.join(unsafe)} are not allowed in a requirement"
        )
    for _, value in _QUOTED_RE.findall(line):
        if not _SAFE_MARKER_VALUE_RE.fullmatch(value):
            raise RequirementsError(
                number, line, f"marker value {value!r} is not a plain version or platform name"
            )


def _check_option(number: int, line: str, policy: RequirementsPolicy) -> str:
    if not policy.allow_options:
        raise RequirementsError(
            number, line, "installer options are not allowed; list package requirements only"
        )
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise RequirementsError(number, line, f"cannot split the option: {exc}") from None
    name = words[0].split("=", 1)[0]
    if name not in ALLOWED_OPTIONS:
        allowed = ", ".join(sorted(ALLOWED_OPTIONS))
        raise RequirementsError(
            number, line, f"option {name} is not allowed; allowed options are: {allowed}"
        )
    if len(words) > 2 or (len(words) == 2 and "=" in words[0]):
        raise RequirementsError(number, line, "one option per line, with at most one value")
    return line


def python_minor_of(version: str) -> str:
    """``"3.11"`` from ``"3.11.7"`` or ``"3.11"``."""
    parts = str(version).split(".")
    if len(parts) < 2 or not all(part.isdigit() for part in parts[:2]):
        raise ConfigError(f"not a Python version: {version!r}; expected e.g. 3.11")
    return f"{parts[0]}.{parts[1]}"


def environment_id(requirements: ParsedRequirements | Iterable[str], python_minor: str) -> str:
    """The id of an environment: a short SHA-256 of the normalized requirements and the Python
    minor version. An empty requirement list is the base environment, ``"base"``."""
    parsed = (
        requirements
        if isinstance(requirements, ParsedRequirements)
        else parse_requirements(list(requirements), RequirementsPolicy(True, True))
    )
    normalized = parsed.normalized()
    if not normalized:
        return BASE_ENVIRONMENT
    material = json.dumps({"python": python_minor_of(python_minor), "requirements": normalized})
    return hashlib.sha256(material.encode()).hexdigest()[:ENV_ID_LENGTH]
