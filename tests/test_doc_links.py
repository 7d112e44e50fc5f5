"""Every relative link and every repository path named in README.md and docs/ exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
# Backticked paths of the repository's own files, e.g. `worker/observability/sentry.py`.
REPO_PATH = re.compile(
    r"`((?:cli|worker|tasks|producer|models|migrations|sandbox|emulator|tests|docs)/[\w/.-]+\.\w+)`"
)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_and_paths_resolve(doc: Path):
    text = doc.read_text()
    for target in LINK.findall(text):
        if "://" in target:
            continue
        assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
    for path in REPO_PATH.findall(text):
        assert (ROOT / path).exists(), f"{doc.name} names missing {path}"


def test_readme_links_every_doc():
    readme = (ROOT / "README.md").read_text()
    for doc in DOCS[1:]:
        assert f"docs/{doc.name}" in readme, f"README.md does not link docs/{doc.name}"
