"""The "Supported hosts" table of packaging/README.md and the os.supported check's list are the
same: an OS added to one and not the other fails here, naming it."""

from __future__ import annotations

import re

from agent.checks.os_checks import SUPPORTED
from tests.packaging.conftest import PACKAGING


def table_rows() -> list[list[str]]:
    text = (PACKAGING / "README.md").read_text()
    section = text.split("## Supported hosts", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert cells[0][:3] == ["OS", "`ID`", "version"], cells[0]
    return cells[2:]  # after the header and its --- line


def test_the_readme_table_is_the_checks_list() -> None:
    from_table: dict[str, list[str]] = {}
    for row in table_rows():
        os_id = row[1].strip("`")
        from_table.setdefault(os_id, []).append(row[2])
    assert from_table == {os_id: list(versions) for os_id, versions in SUPPORTED.items()}


def test_each_row_names_its_python_package_and_how_it_was_tested() -> None:
    for row in table_rows():
        assert len(row) == 6, row
        os_id, python, package, tested = row[1].strip("`"), row[3], row[4], row[5]
        assert re.search(r"python3", python), row
        assert package.startswith("`.rpm`" if os_id in ("rhel", "amzn") else "`.deb`"), row
        assert len(tested) >= 10, row
