"""Optional sampling profile of the server under load (`--profile`), with py-spy when installed.

py-spy attaches to the running server (and, with --subprocesses, Sanic's worker
process) without any change to the server. It is not a project dependency: install
it (`pip install py-spy`) or point BENCH_PY_SPY at the binary. The raw collapsed
stacks are kept, and summarised here into the functions that take the most samples.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

from bench.procs import GENERATOR_CORE, ROOT, Proc

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME_LINE_NO = re.compile(r":\d+\)$")
# Frames under every sample (process start-up, Sanic's serve loop): left out of the inclusive table.
_PLUMBING = ("<module> ", "spawn_main ", "_main (multiprocessing", "BaseProcess.", "worker_serve ",
             "_serve_http_1 ", "_run_server_forever ")


def find_py_spy() -> str | None:
    env = os.environ.get("BENCH_PY_SPY")
    if env and Path(env).exists():
        return env
    venv = ROOT / ".venv" / "bin" / "py-spy"
    return shutil.which("py-spy") or (str(venv) if venv.exists() else None)


class Profiler:
    """`py-spy record --pid <server> --subprocesses --gil --format raw` until stopped.

    --gil keeps only samples of threads holding the GIL: CPU work, not waiting in epoll.
    """

    def __init__(self, server_pid: int, out: Path, run_id: str, name: str) -> None:
        binary = find_py_spy()
        if binary is None:
            raise RuntimeError("--profile needs py-spy: `pip install py-spy` (or set BENCH_PY_SPY)")
        out.mkdir(parents=True, exist_ok=True)
        self.raw = out / f"profile-{name}.txt"
        self.proc = Proc(f"py-spy-{name}", [binary, "record", "--pid", str(server_pid), "--subprocesses",
                                            "--rate", "200", "--gil", "--format", "raw", "-o", str(self.raw)],
                         core=GENERATOR_CORE, run_id=run_id)

    def stop(self) -> Path | None:
        """SIGINT makes py-spy write its file; returns it (None if py-spy failed)."""
        if self.proc.alive():
            try:
                os.kill(self.proc.pid, signal.SIGINT)
                self.proc.popen.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self.proc.stop()
        return self.raw if self.raw.exists() else None


def _func(frame: str) -> str:
    """'handle (app/ws.py:42)' -> 'handle (app/ws.py)': lines of one function count together."""
    frame = _FRAME_LINE_NO.sub(")", frame.strip())
    return frame.replace(str(ROOT) + "/", "").replace("/.venv/lib/python3.11/site-packages/", "")


def summarize(raw: Path, top: int = 25) -> dict[str, object]:
    """Share of samples per function: self (leaf) and inclusive (anywhere on the stack)."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        text, count = m.group(1), int(m.group(2))
        while text.startswith("process "):  # 'process 12:"<command line, may hold ;>";frame;...'
            text = text[text.find('";') + 2:] if '";' in text else ""
        funcs = [_func(f) for f in text.split(";") if f and not f.startswith("thread ")]
        if not funcs:
            continue
        total += count
        own[funcs[-1]] += count
        for f in set(funcs):
            if not f.startswith(_PLUMBING):
                incl[f] += count
    share = (lambda c: round(100 * c / total, 1)) if total else (lambda c: 0.0)
    return {"samples": total, "raw": str(raw),
            "self": [(f, share(c)) for f, c in own.most_common(top)],
            "inclusive": [(f, share(c)) for f, c in incl.most_common(top)]}


def markdown(prof: dict[str, object]) -> list[str]:
    lines = [f"{prof['samples']} samples holding the GIL (py-spy --gil, 200 Hz, server process tree: "
             f"waiting in the event loop is not sampled); raw stacks: `{prof['raw']}`", "",
             "| self % | function |", "|---|---|"]
    lines += [f"| {pct} | `{f}` |" for f, pct in prof["self"]]  # type: ignore[union-attr]
    lines += ["", "| inclusive % | function |", "|---|---|"]
    lines += [f"| {pct} | `{f}` |" for f, pct in prof["inclusive"]]  # type: ignore[union-attr]
    return lines
