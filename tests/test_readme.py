"""README.md's configuration table lists every setting, with its real default, and nothing else."""

from __future__ import annotations

import re
from app.settings import ROOT, Settings, env_name

ROW = re.compile(r"^\| `([A-Z0-9_]+)` \| (.*?) \| (.+) \|$")


def _rows() -> dict[str, str]:
    text = (ROOT / "README.md").read_text("utf-8")
    return {m.group(1): m.group(2) for line in text.splitlines() if (m := ROW.match(line))}


def _shown(default: object) -> str:
    if isinstance(default, bool):
        return "`true`" if default else "`false`"
    return f"`{str(default).replace(str(ROOT), '.')}`"


def test_every_setting_has_a_row_with_its_default() -> None:
    rows = _rows()
    for field_name, f in Settings.model_fields.items():
        name = env_name(field_name)
        assert name in rows, f"README.md's configuration table has no row for {name}"
        if not isinstance(f.default, tuple):  # lists are described in words or comma-joined
            assert rows[name] == _shown(f.default), f"{name}: README says {rows[name]}, the code {f.default!r}"


def test_no_row_for_a_setting_that_does_not_exist() -> None:
    known = set(Settings.env_names().values())
    assert set(_rows()) - known == set()
