"""`.env.example` names only settings and the variables compose uses, each one documented by a comment."""
from __future__ import annotations

import yaml

from tests.helpers.paths import REPO
from tests.infra.known import interpolate_all, unknown_variables


def _entries() -> list[tuple[str, str, list[str]]]:
    """(name, value, the comment lines right above it) for each assignment."""
    entries, comments = [], []
    for line in (REPO / ".env.example").read_text().splitlines():
        line = line.strip()
        if line.startswith("#"):
            comments.append(line)
        elif "=" in line:
            name, value = line.split("=", 1)
            entries.append((name.strip(), value.strip(), comments))
            comments = []
        else:
            comments = []
    return entries


def test_every_key_is_a_known_setting_or_listed_variable():
    names = [name for name, _, _ in _entries()]
    assert names and len(names) == len(set(names))
    assert unknown_variables(names) == []


def test_every_key_is_documented_by_a_comment():
    assert [name for name, _, comments in _entries() if not comments] == []


def test_it_covers_exactly_the_variables_compose_interpolates():
    used: set[str] = set()
    interpolate_all(yaml.safe_load((REPO / "docker-compose.yml").read_text()), used)
    assert used == {name for name, _, _ in _entries()}
