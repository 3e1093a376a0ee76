"""Entry module of the worker and the scheduler: the broker first, then every actor module.

  worker:     python -m dramatiq tasks.worker --processes 1 --threads 4
  scheduler:  python -m tasks.scheduler   (exactly one; same as `periodiq tasks.worker`)
"""

from __future__ import annotations

from tasks.broker import broker  # noqa: F401 - must be imported before any actor

import tasks.files  # noqa: E402,F401
import tasks.flush  # noqa: E402,F401
import tasks.maintenance  # noqa: E402,F401
import tasks.membership  # noqa: E402,F401
