"""The documentation a user reads: the README stays a landing page (at most 250 lines),
every relative link in README.md, CHANGELOG.md and docs/*.md resolves, and every code fence
is closed (an unclosed fence once rendered 30 lines of prose as code)."""
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "CHANGELOG.md")] + sorted(
    glob.glob(os.path.join(ROOT, "docs", "*.md")))


def test_readme_is_a_landing_page():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move details to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_links_resolve_and_fences_close(page):
    with open(page, encoding="utf-8") as fh:
        text = fh.read()
    fences = [line for line in text.splitlines() if line.lstrip().startswith("```")]
    assert len(fences) % 2 == 0, f"{page}: an unclosed code fence"
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if target.startswith(("http://", "https://", "mailto:", "#")) or "<" in target:
            continue
        path = os.path.normpath(os.path.join(os.path.dirname(page), target.split("#")[0]))
        assert os.path.exists(path), f"{os.path.relpath(page, ROOT)} links to a missing {target}"
