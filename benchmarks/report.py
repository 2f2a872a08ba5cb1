"""Statistics and the result table every benchmark prints."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# (metric, baseline value, rexec value, ratio, target)
Row = tuple[str, float, float, float, str]


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def print_table(
    title: str, baseline: str, rows: Iterable[Row], digits: int = 1, label: str = "rexec"
) -> None:
    """A Markdown table: metric, baseline, measured (``label``), their ratio, target."""
    rows = list(rows)
    width = max(len("metric"), *(len(row[0]) for row in rows))
    print(f"\n{title}")
    print(f"| {'metric':<{width}} | {baseline:>11} | {label:>11} | {'ratio':>6} | target   |")
    print(f"|{'-' * (width + 2)}|{'-' * 13}|{'-' * 13}|{'-' * 8}|----------|")
    for name, floor, value, ratio, target in rows:
        print(
            f"| {name:<{width}} | {floor:>11.{digits}f} | {value:>11.{digits}f} "
            f"| {ratio:>6.2f} | {target:<8} |"
        )
