"""The docs stay true to the tree: every module has an owner in docs/architecture.md, every
relative link in README.md and docs/*.md reaches a file (and heading), every setting is in
docs/configuration.md, and the README leads with the two commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tasks.common.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
CODE_PACKAGES = ("flows", "tasks", "local_api")

FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
# [text](target) and ![alt](target); the text may span lines, the target may not.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose_lines(text: str) -> list[str]:
    """The lines of a markdown text outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a markdown file's headings, with GitHub's -1, -2 suffixes for repeats."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        if match := HEADING.match(line):
            slug = github_anchor(match.group(1))
            count = seen.get(slug, 0)
            found.add(slug if count == 0 else f"{slug}-{count}")
            seen[slug] = count + 1
    return found


def relative_links(path: Path) -> list[str]:
    """The link targets of a markdown file that point inside the repository."""
    text = "\n".join(prose_lines(path.read_text(encoding="utf-8")))
    targets = [m.group(1) for m in LINK.finditer(text)]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def test_anchor_matches_githubs_rules() -> None:
    assert github_anchor("Hardening: what each measure prevents, and its limits") == (
        "hardening-what-each-measure-prevents-and-its-limits"
    )
    assert github_anchor("Which date a run loads; missed runs") == (
        "which-date-a-run-loads-missed-runs"
    )
    assert github_anchor("What `make run` does") == "what-make-run-does"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_reach_a_file_and_heading(doc: Path) -> None:
    broken = []
    for target in relative_links(doc):
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no such heading")
    assert not broken, broken


def owned_modules() -> set[str]:
    """Module paths named in docs/architecture.md's tables: `package/` rows and their modules."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    named, package = set(), ""
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) < 2:
            continue
        if first := re.fullmatch(r"`([\w/]+/)`", cells[0]):
            package = first.group(1)
        elif cells[0]:
            package = ""  # a row of another table
        for name in re.findall(r"`([\w.]+\.py)`", cells[1]):
            named.add(package + name)
    return named


def test_architecture_names_every_module() -> None:
    modules = {
        str(path.relative_to(ROOT))
        for package in CODE_PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if path.name != "__init__.py" and "__pycache__" not in path.parts
    }
    assert modules, "no modules found"
    missing = sorted(modules - owned_modules())
    assert not missing, f"docs/architecture.md names no owner for {missing}"


def test_configuration_names_every_setting() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}" not in text]
    assert not missing, f"docs/configuration.md leaves out {missing}"


def test_readme_leads_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = text.split("```")[1]
    assert text.index("```") < 200, "the commands come before any prose"
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:]]
    assert commands[:2] == ["make run", "make test"], commands
