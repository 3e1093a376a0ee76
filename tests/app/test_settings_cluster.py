"""REDIS_CLUSTER (app/settings.py): Dramatiq's Redis broker is not cluster-safe, so a clustered
deployment must name BROKER_URL; without it every process refuses to start and says why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import Settings, SettingsError

ROOT = Path(__file__).resolve().parents[2]


def test_cluster_needs_a_broker_url() -> None:
    with pytest.raises(SettingsError, match="REDIS_CLUSTER=true needs BROKER_URL"):
        Settings.load({"REDIS_CLUSTER": "true"}, env_file=None)
    s = Settings.load({"REDIS_CLUSTER": "yes", "BROKER_URL": "redis://127.0.0.1:6379/1"}, env_file=None)
    assert s.redis_cluster and s.broker_url == "redis://127.0.0.1:6379/1"
    assert Settings.load({"REDIS_CLUSTER": ""}, env_file=None).redis_cluster is False
    assert Settings.load({}, env_file=None).redis_cluster is False


@pytest.mark.parametrize("module", [["app.server"], ["dramatiq", "tasks.worker", "--processes", "1"]])
def test_a_process_refuses_to_start_on_a_cluster_without_broker_url(module: list[str]) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "REDIS_CLUSTER": "true",
           "REDIS_URL": "redis://127.0.0.1:1", "PORT": "1"}
    proc = subprocess.run([sys.executable, "-m", *module], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0
    assert "REDIS_CLUSTER=true needs BROKER_URL" in proc.stderr
