"""The reference docs cover every setting and every check id the code defines."""

from __future__ import annotations

import re
from pathlib import Path

from replica_router.conf import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_has_a_section():
    text = (ROOT / "docs" / "settings.md").read_text()
    documented = set(re.findall(r"^### `([A-Z_]+)`$", text, re.MULTILINE))
    assert documented == set(DEFAULTS)


def test_every_check_id_has_a_section():
    source = "".join(path.read_text() for path in (ROOT / "replica_router").glob("*.py"))
    used = set(re.findall(r"replica_router\.[EW]\d{3}", source))
    text = (ROOT / "docs" / "checks.md").read_text()
    documented = set(re.findall(r"^## (replica_router\.[EW]\d{3})$", text, re.MULTILINE))
    assert used  # the pattern still matches how ids are written
    assert documented == used
