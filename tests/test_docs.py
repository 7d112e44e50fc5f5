"""The README's generated parts match the code."""

from __future__ import annotations

import time
from pathlib import Path

from worker import wfm
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


def readme_block(name: str) -> str:
    """The code of the fenced block between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    text = README.read_text()
    start = text.index(f"<!-- {name}:start -->")
    end = text.index(f"<!-- {name}:end -->")
    return text[start:end].split("```")[1].removeprefix("python\n")


def test_the_readme_wfm_verifier_accepts_the_workers_signature_and_rejects_stale_ones():
    namespace: dict[str, object] = {}
    exec(compile(readme_block("wfm-verifier"), "README.md", "exec"), namespace)  # noqa: S102
    verify = namespace["verify"]
    assert callable(verify)
    body = b'{"event_id":"e-1"}'

    def signed(age_s: int) -> tuple[str, str]:
        timestamp = str(int(time.time()) - age_s)
        return timestamp, wfm.sign("k", timestamp, body)

    assert verify("k", *signed(0), body)
    assert verify("k", *signed(wfm.SIGNATURE_TOLERANCE_S - 5), body)
    assert not verify("k", *signed(wfm.SIGNATURE_TOLERANCE_S + 2), body), "replayed"
    assert not verify("k", *signed(-wfm.SIGNATURE_TOLERANCE_S - 2), body), "from the future"
    assert not verify("other", *signed(0), body)
    assert not verify("k", "yesterday", signed(0)[1], body)
