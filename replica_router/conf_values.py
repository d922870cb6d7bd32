"""Reading one value of ``settings.REPLICA_ROUTER``, and the problem to report when it is wrong.

A parser takes a key's name, the value the settings give it and the key's
default, and returns the parsed value or raises :class:`Invalid` carrying a
:class:`ConfigProblem`; the default only words the hint. :mod:`replica_router.conf`
knows the keys: it picks each one's parser and collects the problems. This
module knows no key's default or choices, so that it does not import ``conf``.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Callable
from pathlib import PurePath
from typing import Final, NamedTuple

__all__ = [
    "SETTING_NAME",
    "ConfigProblem",
    "Invalid",
    "Parser",
    "bad_value",
    "is_alias",
    "one_of",
    "parse_alias",
    "parse_bool",
    "parse_cache_alias",
    "parse_cookie_name",
    "parse_directory",
    "parse_metrics",
    "parse_positive_float",
    "parse_positive_int",
    "parse_primary_only",
    "parse_transaction_pooling",
    "prometheus_installed",
    "setting_key",
    "show",
]

SETTING_NAME: Final = "REPLICA_ROUTER"


class ConfigProblem(NamedTuple):
    """One thing wrong with ``settings.REPLICA_ROUTER``, worded for a system check."""

    id: str
    message: str
    hint: str


class Invalid(Exception):
    """Raised by a value parser; carries the problem to report."""

    def __init__(self, problem: ConfigProblem) -> None:
        super().__init__(problem.message)
        self.problem = problem


#: (name, value, default) -> the parsed value, or raises :class:`Invalid`.
Parser = Callable[[str, object, object], object]


def show(value: object, limit: int = 80) -> str:
    """repr() for messages: short, and never raising on a hostile object."""
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__name__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def setting_key(name: str) -> str:
    return f"{SETTING_NAME}[{name!r}]"


def bad_value(
    name: str, value: object, expected: str, default: object, hint: str | None = None
) -> Invalid:
    return Invalid(
        ConfigProblem(
            "replica_router.E009",
            f"{setting_key(name)} must be {expected}, not {show(value)}.",
            hint
            or f"Set {setting_key(name)} to {expected}, or remove it to use the default "
            f"{show(default)}.",
        )
    )


def is_alias(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def parse_alias(name: str, value: object, default: object) -> str:
    if not isinstance(value, str) or not value:
        raise bad_value(name, value, "a database alias (a non-empty str)", default)
    return value


def parse_positive_float(name: str, value: object, default: object) -> float:
    # bool is an int; True seconds is a typo, not a number.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_value(name, value, "a positive number", default)
    result = float(value)
    if not (result > 0 and math.isfinite(result)):
        raise bad_value(name, value, "a positive number", default)
    return result


def parse_bool(name: str, value: object, default: object) -> bool:
    if not isinstance(value, bool):
        raise bad_value(name, value, "True or False", default)
    return value


def parse_positive_int(name: str, value: object, default: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise bad_value(name, value, "a positive int", default)
    return value


def one_of(choices: tuple[str, ...]) -> Parser:
    """The parser of a str with a fixed set of values."""
    expected = "one of " + ", ".join(repr(c) for c in choices)

    def parse_choice(name: str, value: object, default: object) -> str:
        if value not in choices:
            raise bad_value(name, value, expected, default)
        return str(value)

    return parse_choice


_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 6265 token


def parse_cache_alias(name: str, value: object, default: object) -> str:
    if not isinstance(value, str) or not value:
        raise bad_value(name, value, "a cache alias (a non-empty str)", default)
    return value


def parse_directory(name: str, value: object, default: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | PurePath) or not str(value):
        raise bad_value(name, value, "a directory path (a str), or None", default)
    return str(value)


def parse_cookie_name(name: str, value: object, default: object) -> str:
    if not isinstance(value, str) or not _COOKIE_NAME.fullmatch(value):
        raise bad_value(name, value, "a cookie name (letters, digits and !#$%&'*+-.^_`|~)", default)
    return value


def parse_primary_only(name: str, value: object, default: object) -> frozenset[str]:
    expected = "a list of app labels and model labels"
    if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
        raise bad_value(
            name, value, expected, default, hint="For example ['sessions', 'billing.Invoice']."
        )
    entries: set[str] = set()
    for entry in value:
        if not isinstance(entry, str) or not entry:
            raise bad_value(
                name,
                value,
                expected,
                default,
                hint=f"Each entry must be a non-empty str; {show(entry)} is not.",
            )
        entries.add(entry.lower())
    return frozenset(entries)


def prometheus_installed() -> bool:
    """Whether prometheus-client (the ``metrics`` extra) can be imported."""
    try:
        return importlib.util.find_spec("prometheus_client") is not None
    except (ImportError, ValueError):
        return False


def parse_metrics(name: str, value: object, default: object) -> bool:
    if isinstance(value, str) and value == "auto":
        return prometheus_installed()
    if not isinstance(value, bool):
        raise bad_value(name, value, "True, False or 'auto'", default)
    if value and not prometheus_installed():
        raise Invalid(
            ConfigProblem(
                "replica_router.E010",
                f"{setting_key(name)} is True, but prometheus-client is not installed.",
                "Install the metrics extra: pip install 'django-replica-router[metrics]'; "
                f"or set {setting_key(name)} to 'auto' (on when it is installed) or False.",
            )
        )
    return value


def parse_transaction_pooling(name: str, value: object, default: object) -> bool | frozenset[str]:
    if isinstance(value, bool):
        return value
    if (
        isinstance(value, str)
        or not isinstance(value, list | tuple | set | frozenset)
        or not all(is_alias(alias) for alias in value)
    ):
        raise bad_value(
            name,
            value,
            "True, False or a list of database aliases",
            default,
            hint="For example ['default', 'replica_1'], or True for every alias the router uses.",
        )
    return frozenset(value)
