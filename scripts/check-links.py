#!/usr/bin/env python3
"""Every relative link in README.md and docs/*.md resolves: the file exists and, for a
`#fragment`, the target page has a heading with that GitHub anchor. External links (a scheme,
`mailto:`) are not fetched. Exit 1 listing every broken link."""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
LINK = re.compile(r"(?<!\\)\[(?:[^\]\\]|\\.)*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def slug(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    title = re.sub(r"`", "", title.strip().lower())
    title = re.sub(r"[^\w\- ]", "", title)
    return title.replace(" ", "-")


def strip_code(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans blanked."""
    out, fence = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
            out.append("")
            continue
        out.append("" if fence else re.sub(r"`[^`]*`", "``", line))
    return out


def anchors(path: pathlib.Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
            continue
        m = None if fence else HEADING.match(line)
        if m:
            s = slug(m.group(2))
            n = seen.get(s, 0)
            seen[s] = n + 1
            found.add(s if n == 0 else f"{s}-{n}")
    return found


def main() -> int:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
    problems = []
    for page in pages:
        for lineno, line in enumerate(strip_code(page.read_text(encoding="utf-8")), 1):
            for m in LINK.finditer(line):
                target = m.group(1)
                if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
                    continue  # https:, mailto:, …
                path, _, frag = target.partition("#")
                dest = (page.parent / path).resolve() if path else page
                where = f"{page.relative_to(ROOT)}:{lineno}: {target}"
                if not dest.exists():
                    problems.append(f"{where}: no such file")
                elif frag and dest.suffix == ".md" and frag not in anchors(dest):
                    problems.append(f"{where}: no heading with that anchor in {dest.relative_to(ROOT)}")
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        return 1
    print(f"check-links: every relative link of {len(pages)} pages resolves")
    return 0


if __name__ == "__main__":
    sys.exit(main())
