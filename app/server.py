"""Entry point: `python -m app.server` serves HTTP and /ws on HOST:PORT with WORKERS processes."""

from __future__ import annotations

import logging
import resource
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
    loader = AppLoader(factory=partial(create_app, settings))
    app = loader.load()
    app.prepare(host=settings.host, port=settings.port, workers=settings.workers,
                access_log=False, motd=False, )
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
