"""NNCF 2's scopes: exact names, or regular expressions marked by a `{re}` prefix."""

from __future__ import annotations

import re
from collections.abc import Iterable

REGEX_PREFIX = "{re}"


def match_scopes(
    scopes: Iterable[str], names: list[str], submodules: bool = False
) -> tuple[dict[str, list[str]], list[str]]:
    """{scope: names it matches} for the scopes that match, and the scopes that match none.
    A regex matches anywhere in a name (re.search); a plain scope matches its exact name and,
    with `submodules`, the module names below it ('backbone' matches 'backbone.stem.conv')."""
    matched: dict[str, list[str]] = {}
    unmatched: list[str] = []
    for scope in scopes:
        if scope.startswith(REGEX_PREFIX):
            pattern = re.compile(scope[len(REGEX_PREFIX) :])
            hits = [n for n in names if pattern.search(n)]
        else:
            hits = [n for n in names if n == scope or (submodules and n.startswith(scope + "."))]
        if hits:
            matched[scope] = hits
        else:
            unmatched.append(scope)
    return matched, unmatched
