"""The README and docs/: every relative link and anchor resolves, and the README stays short."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 300

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_CODE_SPAN = re.compile(r"(`+).+?\1")
_LINK = re.compile(r"!?\[([^\]]*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans removed."""
    lines, fence = [], None
    for line in text.splitlines():
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
        elif fence is not None and m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
            fence = None
        elif fence is None:
            lines.append(_CODE_SPAN.sub("", line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, markup and punctuation (but hyphens) dropped, lowercase,
    each space a hyphen."""
    text = _LINK.sub(r"\1", heading).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file; a repeated slug gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        m = _HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(path: Path) -> list[str]:
    """The relative links of a markdown file whose file or heading anchor does not exist, as 'target: why'."""
    broken = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        for target in (m.group(2) for m in _LINK.finditer(line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http(s), mailto: not checked
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                broken.append(f"{target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{target}: no heading #{anchor} in {file_part or path.name}")
    return broken


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_relative_links_resolve(path):
    assert broken_links(path) == []


def test_readme_is_short_and_keeps_the_quick_start():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    assert "bash quickstart.sh test" in text and "bash quickstart.sh train" in text


def test_every_docs_file_is_linked_from_the_readme():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    unlinked = [p.name for p in DOCS[1:] if f"(docs/{p.name}" not in text]
    assert unlinked == []


def test_slug_follows_github():
    assert slug("Validation and the best checkpoint") == "validation-and-the-best-checkpoint"
    assert slug("Does it learn?") == "does-it-learn"
    assert slug("What `train` prints: **now**") == "what-train-prints-now"
    assert slug("heldout: n = 4; Δ [95% CI]") == "heldout-n--4-δ-95-ci"


def test_checker_finds_broken_links(tmp_path):
    (tmp_path / "b.md").write_text("# Part one\n\n## Part one\n\n```\n# not a heading\n```\n")
    page = tmp_path / "a.md"
    page.write_text(
        "# Top\n[ok](b.md#part-one) [dup](b.md#part-one-1) [self](#top) [web](https://x.org/y#z) `[code](c.md)`\n"
        "[gone](c.md) [no anchor](b.md#part-two) [fenced](b.md#not-a-heading) ![img](pic.png)\n"
    )
    assert broken_links(page) == [
        "c.md: no such file",
        "b.md#part-two: no heading #part-two in b.md",
        "b.md#not-a-heading: no heading #not-a-heading in b.md",
        "pic.png: no such file",
    ]
