"""Entry point: `python -m app.server` serves HTTP and /ws on HOST:PORT with WORKERS processes."""

from __future__ import annotations

from functools import partial

from sanic import Sanic
from sanic.worker.loader import AppLoader

from app.factory import create_app
from app.settings import Settings


def main() -> None:
    settings = Settings.load()
    loader = AppLoader(factory=partial(create_app, settings))
    app = loader.load()
    app.prepare(host=settings.host, port=settings.port, workers=settings.workers,
                access_log=False, motd=False, )
    Sanic.serve(primary=app, app_loader=loader)


if __name__ == "__main__":
    main()
