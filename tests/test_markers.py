"""The e2e rule (tests/markers.py): the inner loop `-m 'not e2e'` selects no test that needs a process.

Checked three ways: the fixture scan finds the fixtures known to start servers and none of
the in-process ones; on synthetic sources it follows a fixture that starts a process through
a fixture that depends on it; and every item of this very run that the rule calls e2e carries
the marker (so dropping or breaking the collection hook fails here).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests import markers

# Fixtures that start processes (tests/conftest.py, tests/faults, tests/fuzz, tests/browser) and
# fixtures that must stay in-process (real Redis and PostgreSQL, no process of their own).
KNOWN_PROCESS = {"server", "api", "own_server", "stack", "ws_server", "web", "person"}
KNOWN_IN_PROCESS = {"settings", "keys", "isolated", "redis", "db", "pool"}


def test_the_fixture_scan_finds_the_server_fixtures_and_only_them() -> None:
    found = markers.process_fixtures()
    assert KNOWN_PROCESS <= found.keys(), KNOWN_PROCESS - found.keys()
    assert not KNOWN_IN_PROCESS & found.keys(), {k: found[k] for k in KNOWN_IN_PROCESS & found.keys()}


def test_a_fixture_that_depends_on_a_process_fixture_makes_its_tests_e2e(tmp_path: Path) -> None:
    start = markers.PROCESS_CALLS[1]  # built here, so this module's own source starts nothing
    src = tmp_path / "conftest.py"
    src.write_text(textwrap.dedent(f'''
        import pytest

        @pytest.fixture(scope="module")
        def booted():
            yield {start}"x")

        @pytest.fixture(name="client")
        def _client(booted):
            return booted

        @pytest.fixture
        def plain(tmp_path):
            return tmp_path
    '''))
    fixtures = markers.process_fixtures([src])
    assert set(fixtures) == {"booted", "client"}
    here = markers.TESTS_DIR / "app" / "test_x.py"
    assert markers.e2e_reason(here, ["client", "tmp_path"], "", fixtures)
    assert markers.e2e_reason(here, ["plain", "tmp_path"], "", fixtures) is None
    assert markers.e2e_reason(here, ["plain"], f"x = {start})", fixtures) == "its module starts processes"
    assert markers.e2e_reason(markers.TESTS_DIR / "faults" / "test_x.py", [], "", fixtures)


def test_every_test_of_this_run_that_needs_a_process_is_marked_e2e(request: pytest.FixtureRequest) -> None:
    fixtures = markers.process_fixtures()
    unmarked = []
    for item in request.session.items:
        path = Path(str(item.fspath))
        source = path.read_text(errors="replace") if path.is_file() else ""
        reason = markers.e2e_reason(path, getattr(item, "fixturenames", ()), source, fixtures)
        if reason and not item.get_closest_marker("e2e"):
            unmarked.append(f"{item.nodeid}: {reason}")
    assert not unmarked, "tests that need a process but would run in -m 'not e2e':\n" + "\n".join(unmarked)
