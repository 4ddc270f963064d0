"""The README's layout table names every directory of the tree and every pgwa package, and
nothing that is not there: a newcomer finds where a thing lives from it."""

from __future__ import annotations

import re
import subprocess

from pgwa.config import ROOT

# A row of the table under "## Layout": | `path/` | what lives there |
ROW = re.compile(r"^\| `([^`]+)/` \|", re.MULTILINE)


def layout_section() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]


def ignored(name: str) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", name], check=False, cwd=ROOT).returncode == 0


def test_the_layout_table_names_every_directory_and_pgwa_package() -> None:
    section = layout_section()
    rows = set(ROW.findall(section))
    top = {p.name for p in ROOT.iterdir() if p.is_dir() and p.name != ".git" and not ignored(p.name)}
    packages = {f"pgwa/{p.parent.name}" for p in (ROOT / "pgwa").glob("*/__init__.py")}
    assert (top | packages) - rows == set(), "in the tree, missing from the README's layout table"
    assert {r for r in rows if not (ROOT / r).is_dir()} == set(), "in the table, not in the tree"
    db = {p.name for p in (ROOT / "db").iterdir() if p.is_dir()}
    assert {d for d in db if f"`db/{d}/`" not in section and f"`{d}/`" not in section} == set()
