"""Requirements are PEP 508 only; anything that could steer the installer is refused."""

from __future__ import annotations

import pytest

from rexec.requirements import RequirementsError, parse_requirements


def test_specifiers_extras_and_markers_are_kept_exactly():
    text = (
        'numpy>=1.26\npandas<3\npkg[extra]; python_version > "3.8"\n# comment\n\nrich  # inline\n'
    )
    assert parse_requirements(text).requirements == (
        "numpy>=1.26",
        "pandas<3",
        'pkg[extra]; python_version > "3.8"',
        "rich",
    )


@pytest.mark.parametrize(
    "line, reason",
    [
        ("--index-url http://evil.example/simple", "options"),
        ("-r other.txt", "options"),
        ("-e git+https://example.org/x.git", "options"),
        ("pkg @ https://example.org/pkg.whl", "direct URLs"),
        ("numpy; $(rm -rf ~)", "not a valid requirement"),
        ("numpy && curl evil", "not a valid requirement"),
    ],
)
def test_dangerous_lines_are_refused_naming_the_line(line, reason):
    with pytest.raises(RequirementsError, match=reason) as info:
        parse_requirements(f"rich\n{line}\n")
    assert info.value.line_number == 2
