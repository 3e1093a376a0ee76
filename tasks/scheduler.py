"""The one periodiq scheduler: `python -m tasks.scheduler` (run exactly one).

`python -m periodiq` cannot work (the package has no __main__); this is periodiq's own
entry point with the project's broker module, equal to the `periodiq tasks.worker` script.
"""

from __future__ import annotations

import sys

from periodiq import entrypoint


def main() -> None:
    from tasks.broker import lower_priority, settings

    lower_priority(settings.worker_nice)  # WORKER_NICE: ticks never compete with live traffic
    sys.argv = ["periodiq", "tasks.worker", *sys.argv[1:]]
    entrypoint()


if __name__ == "__main__":
    main()
