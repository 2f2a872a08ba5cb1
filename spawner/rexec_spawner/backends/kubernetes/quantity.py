"""Kubernetes resource quantities ("500m", "2", "1Gi") as exact numbers, and back.

Settings compare quantities (a limit must cover the volumes in it) and namespace quotas multiply
them, so they are parsed into :class:`~decimal.Decimal` (no float rounding) and written back in
the shortest exact form. Only the forms the settings accept are read: a plain or decimal number
with an optional SI (``m``, ``k``, ``M``...) or binary (``Ki``, ``Mi``...) suffix.
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal

from rexec.errors import ConfigError

_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")
# Written back in the shortest exact form: a whole number with the suffix (binary, or decimal
# from M up: "2k" CPUs would be right but puzzling) that divides it, binary on a tie; or plain;
# or, for fractions, in milli units.
_WHOLE_SUFFIXES = ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki", "E", "P", "T", "G", "M")


def parse_quantity(text: str) -> Decimal:
    """The value of a quantity such as ``"500m"`` (0.5) or ``"1Gi"`` (1073741824)."""
    match = QUANTITY.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ConfigError(f"{text!r} is not a Kubernetes quantity; write e.g. '500m', '2', '1Gi'")
    number, suffix = match.groups()
    return Decimal(number) * _SUFFIXES[suffix or ""]


def format_quantity(value: Decimal) -> str:
    """``value`` as a quantity the API server accepts, exact (fractions below 1m round up)."""
    if value < 0:
        raise ValueError(f"quantities are not negative: {value}")
    if value != value.to_integral_value():
        milli = (value * 1000).to_integral_value(rounding=ROUND_CEILING)
        return f"{int(milli)}m"
    whole = int(value)
    forms = [str(whole)]
    for suffix in _WHOLE_SUFFIXES:
        factor = int(_SUFFIXES[suffix])
        if whole and whole % factor == 0:
            forms.append(f"{whole // factor}{suffix}")
    # min() keeps the first of equally short forms: plain, then binary, then decimal.
    return min(forms, key=len)
