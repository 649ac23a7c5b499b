"""Kill the local Ray processes a `tc encode --engine ray` driver started, once the driver is gone.

A driver that ends normally, by Ctrl-C or by SIGTERM shuts Ray down itself. One killed outright (SIGKILL, the OOM
killer) cannot: Ray's own fate sharing then stops the raylet and the GCS, but the raylet's dashboard and
runtime-env agents (~85 MB each) were measured to outlive it indefinitely. This watchdog runs beside the driver
(`python ray_watchdog.py DRIVER_PID`, stdlib only, its stdin a pipe from the driver), records every process
descending from the driver twice a second, and when the pipe closes (the driver exited, or shut Ray down and
closed it) stops those that are still running: SIGTERM, then SIGKILL a second later. Only processes that descend
from the driver are touched, each checked by its start time so that a pid reused since is left alone.

It reads /proc, so it runs on Linux only; the driver starts it in a session of its own, so that a Ctrl-C or a
signal to the driver's process group does not end it before it has cleaned up.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

POLL_S = 0.5
GRACE_S = 1.0  # between SIGTERM and SIGKILL


def process_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, start time in clock ticks, state letter) of every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                data = fh.read()
        except OSError:  # it exited meanwhile
            continue
        fields = data[data.rindex(b")") + 2:].split()  # after "pid (comm) ": state, ppid, ... (comm may hold spaces)
        table[int(entry)] = (int(fields[1]), int(fields[19]), fields[0].decode())
    return table


def descendants(root: int, table: dict[int, tuple[int, int, str]]) -> set[int]:
    """Every process below `root` in the process tree (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def still_running(seen: dict[int, int]) -> list[int]:
    """The recorded processes that still run (same start time, not a zombie waiting to be reaped)."""
    table = process_table()
    return [pid for pid, start in seen.items() if pid in table and table[pid][1] == start and table[pid][2] != "Z"]


def stop(seen: dict[int, int]) -> None:
    """SIGTERM the recorded processes still running, then SIGKILL those left after GRACE_S."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = still_running(seen)
        for pid in alive:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + GRACE_S
        while alive and time.monotonic() < deadline:
            time.sleep(0.05)
            alive = still_running({pid: seen[pid] for pid in alive})
        if not alive:
            return


def watch(driver: int) -> None:
    """Record the driver's descendants until its pipe on stdin closes, then stop those still running."""
    me, seen = os.getpid(), {}
    while True:
        ready, _, _ = select.select([0], [], [], POLL_S)
        if ready and not os.read(0, 4096):
            break  # end of file: the driver is gone (or done with Ray)
        if os.getppid() != driver:  # reparented: the driver died (a pipe that somehow stays open)
            break
        table = process_table()
        seen.update({pid: table[pid][1] for pid in descendants(driver, table) - {me}})
    stop(seen)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the pipe ends the watch
    watch(int(sys.argv[1]))
