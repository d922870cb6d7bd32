"""The reference docs cover every setting, check id, command flag, JSON field,
state and signal the code defines."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from django.core.management.base import BaseCommand

from replica_router import signals
from replica_router.conf import DEFAULTS
from replica_router.health import NodeStatus, Snapshot, State
from replica_router.management.commands.replica_health import Command
from replica_router.report import POOL_FIELDS

ROOT = Path(__file__).resolve().parents[2]
#: The replica_health reference: command flags, table columns, JSON fields,
#: states and the signal.
HEALTH = (ROOT / "docs" / "replica-health.md").read_text()


def test_every_setting_has_a_section():
    text = (ROOT / "docs" / "settings.md").read_text()
    documented = set(re.findall(r"^### `([A-Z_]+)`$", text, re.MULTILINE))
    assert documented == set(DEFAULTS)


def test_every_check_id_has_a_section():
    source = "".join(path.read_text() for path in (ROOT / "replica_router").rglob("*.py"))
    used = set(re.findall(r"replica_router\.[EW]\d{3}", source))
    text = (ROOT / "docs" / "checks.md").read_text()
    documented = set(re.findall(r"^## (replica_router\.[EW]\d{3})$", text, re.MULTILINE))
    assert used  # the pattern still matches how ids are written
    assert documented == used


def _flags(command: BaseCommand) -> set[str]:
    parser = command.create_parser("manage.py", "replica_health")
    return {flag for action in parser._actions for flag in action.option_strings}


def test_every_replica_health_flag_is_documented():
    own = _flags(Command()) - _flags(BaseCommand())
    assert own >= {"--format", "--watch", "--check"}
    missing = {flag for flag in own if f"`{flag}" not in HEALTH}
    assert not missing


def _replica_row(**figures) -> NodeStatus:
    return NodeStatus(
        alias="replica_1",
        role="replica",
        host="db",
        port="5432",
        weight=1,
        state=State.HEALTHY,
        in_rotation=True,
        reason="in rotation",
        since=datetime.now(UTC),
        **figures,
    )


def test_every_json_field_has_a_row_in_the_schema():
    now = datetime.now(UTC)
    node = _replica_row(
        checked_at=now,
        lag_seconds=0.0,
        lag_bytes=0,
        recovery_conflicts=3,
        recovery_conflicts_per_second=0.1,
        rtt=0.001,
        lsn=1,
        last_error="x",
    )
    document = Snapshot(nodes=(node,), taken_at=now).as_dict(topology=True)
    fields = set(document) | set(document["nodes"][0]) | {"pool"}
    missing = {field for field in fields if f"| `{field}` |" not in HEALTH}
    assert not missing
    assert all(f"`{field}`" in HEALTH for field in POOL_FIELDS)


def test_every_state_and_signal_is_documented():
    assert all(f"| `{state}` |" in HEALTH for state in State)
    assert signals.__all__
    assert all(f"`{name}`" in HEALTH for name in signals.__all__)


def test_every_documented_default_is_the_codes_default():
    """The reference must not drift from conf.DEFAULTS when a default changes."""
    import ast

    text = (ROOT / "docs" / "settings.md").read_text()
    sections = re.split(r"^### `([A-Z_]+)`$", text, flags=re.MULTILINE)[1:]
    documented = {}
    for name, body in zip(sections[::2], sections[1::2], strict=True):
        match = re.search(r"\*\*Default:\*\* `([^`]*)`", body)
        assert match, f"{name} has no **Default:** line"
        documented[name] = ast.literal_eval(match.group(1))
    code = {
        name: dict(value) if hasattr(value, "items") else value for name, value in DEFAULTS.items()
    }
    code = {name: list(v) if isinstance(v, tuple) else v for name, v in code.items()}
    assert documented == code


def _section(start: str, end: str) -> str:
    return HEALTH.split(start, 1)[1].split(end, 1)[0]


def test_public_and_topology_fields_are_documented_in_their_own_tables():
    node = _replica_row()
    public = set(node.as_dict(topology=False))
    topology = set(node.as_dict(topology=True)) - public | {"pool"}
    everyone = _section("Each node, for everyone:", "Each node, with topology")
    staff = HEALTH.split("Each node, with topology", 1)[1]
    assert {field for field in public if f"| `{field}` |" not in everyone} == set()
    assert {field for field in topology if f"| `{field}` |" not in staff} == set()


def test_every_table_column_is_documented_and_shown_in_the_example():
    from replica_router.management.commands.replica_health import COLUMNS

    reference = _section("| Column | Meaning |", "\n\n")
    assert {column for column in COLUMNS if f"`{column}`" not in reference} == set()
    example = _section("$ python manage.py replica_health\n", "\n")
    assert re.split(r"\s{2,}", example.strip()) == list(COLUMNS)


# A measured figure: a number with a unit benchmarks print.
_FIGURE = re.compile(r"\d[\d.,]*\s?(?:ms|µs|ns|%|×|x faster|req/s)(?!\w)")


def test_figures_reach_the_docs_only_from_docs_bench():
    """A page shows a benchmark figure by including docs/bench/*.txt, never by
    copying it: a copy goes stale when the benchmarks run again."""
    pages = [*(ROOT / "docs").glob("*.md"), ROOT / "README.md"]
    copied = {}
    for page in pages:
        prose = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.MULTILINE | re.DOTALL)
        found = _FIGURE.findall(prose)
        if found:
            copied[page.name] = found
    assert copied == {}
    assert "bench/" in (ROOT / "docs" / "benchmarks.md").read_text()


def test_every_link_has_text():
    """``[](page.md)`` renders as nothing on GitHub, where the README sends readers."""
    pages = [*(ROOT / "docs").glob("*.md"), ROOT / "README.md", ROOT / "CONTRIBUTING.md"]
    empty = {page.name for page in pages if "[](" in page.read_text()}
    assert empty == set()


def test_the_docs_stay_within_their_word_budget():
    pages = [page for page in (ROOT / "docs").glob("*.md") if page.name != "changelog.md"]
    assert sum(len(page.read_text().split()) for page in pages) <= 12_000
