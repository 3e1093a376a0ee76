"""Entry point: `python -m app.server` serves HTTP and /ws on HOST:PORT with WORKERS processes."""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import threading
import time
from functools import partial

from sanic import Sanic
from sanic.worker.loader import AppLoader

from app.settings import Settings


def raise_open_files_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit: every WebSocket holds a descriptor, and a
    soft limit of 1024 (a common default) would refuse clients long before memory runs out."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


# Longer than Sanic's graceful shutdown (15 s): an orphaned manager first gets its normal stop.
ORPHAN_GRACE_S = 20.0


def watch_for_orphaning(grace_s: float = ORPHAN_GRACE_S) -> threading.Thread | None:
    """In Sanic's manager: once the process that started us is gone, allow `grace_s` for the
    normal shutdown its death signal (PR_SET_PDEATHSIG) began, then kill our children and exit.

    The death signal alone is not enough: a SIGTERM that lands while the manager is starting a
    worker (the worker dies inside its start-up hooks) leaves Sanic's manager running forever
    (seen: > 60 s at ~18% of a core), and nothing would ever stop it. Not armed when we have no
    parent to lose (PID 1 in a container)."""
    parent = os.getppid()
    if parent <= 1:
        return None

    def run() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        time.sleep(grace_s)
        for child in multiprocessing.active_children():
            child.kill()
        logging.getLogger("chat.server").error("orphaned manager did not stop within %.0f s: exiting", grace_s)
        os._exit(1)

    thread = threading.Thread(target=run, name="orphan-watchdog", daemon=True)
    thread.start()
    return thread


def main() -> None:
    # Imported here, not at the top: Sanic's processes started by multiprocessing "spawn"
    # (its shared-context manager) re-import this module, and the whole app (every blueprint,
    # service and model) cost that process about 7.6 MB of RSS that it never uses. The
    # workers get create_app through the pickled loader, which imports it there.
    from app.factory import create_app

    settings = Settings.load()
    if settings.workers > 1 and not settings.prometheus_multiproc_dir:
        # prometheus-client reads its variable at import, in each worker: it must come from outside.
        from app.logs import configure_logging

        configure_logging(settings.log_level, settings.chat_log_format)
        logging.getLogger("chat.server").warning(
            "WORKERS>1 without PROMETHEUS_MULTIPROC_DIR: each GET /metrics shows the counters of "
            "the one worker that answers it (make run sets it)")
    raise_open_files_limit()  # before Sanic forks its workers, which inherit it
    watch_for_orphaning()
    loader = AppLoader(factory=partial(create_app, settings))
    app = loader.load()
    app.prepare(host=settings.host, port=settings.port, workers=settings.workers,
                access_log=False, motd=False, backlog=settings.listen_backlog)
    Sanic.serve(primary=app, app_loader=loader)


if __name__ == "__main__":
    main()
elif __name__ == "__mp_main__":
    # A process Sanic's manager started with multiprocessing "spawn" (each serving worker, its
    # shared-context manager) runs this module under this name first. Neither gets a death
    # signal from Sanic: after a SIGKILLed manager the workers would serve on, unsupervised,
    # and the context manager (with multiprocessing's resource tracker) would stay forever.
    from app.ops.procs import die_with_parent

    die_with_parent()
