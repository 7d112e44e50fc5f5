"""The README's generated parts match the code."""

from __future__ import annotations

from pathlib import Path

from worker.settings import settings_markdown

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_settings_table_is_generated_from_the_settings_class():
    text = README.read_text()
    start = text.index("<!-- settings:start -->") + len("<!-- settings:start -->")
    end = text.index("<!-- settings:end -->")
    assert text[start:end].strip() == settings_markdown(), "run `presence settings` and paste"


def test_readme_opens_with_the_two_commands():
    first_block = README.read_text().split("```")[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line.strip()]
    assert commands == ["make demo", "make test"]
