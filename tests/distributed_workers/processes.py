"""Starting job processes for the distributed tests: loopback ports, time limits, reaping."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# Messages of a TensorFlow server that lost the race for a port chosen free.
PORT_TAKEN = ("Could not start gRPC server", "Address already in use")
# Every job process ends itself after this long, whatever happens to the test.
MAX_PROCESS_SECONDS = 300
# TensorFlow's start-up chatter, left out of failure messages.
NOISE = ("I0000 ", "WARNING: All log messages", "To enable the following", "failed call to cuInit")


def free_loopback_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now, chosen by the OS, all distinct."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def job_env(**extra: str) -> dict[str, str]:
    """The environment of a job process: this one's, TensorFlow backend, quiet logs."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2", **extra)
    return env


@dataclass
class Finished:
    """What one job process left behind."""

    returncode: int | None  # None: still running at the deadline (then killed)
    seconds: float  # from the start of the job to the process's exit (or the deadline)
    exited_at: float | None  # wall-clock time (time.time()) of the exit, as first seen
    report: dict[str, Any] | None  # its JSON report, None if it wrote none
    log: str  # the end of its stdout and stderr

    def describe(self) -> str:
        error = (self.report or {}).get("error", "")
        return (
            f"exit {self.returncode} after {self.seconds:.1f} s; error: {error}\nlog:\n{self.log}"
        )


class Job:
    """Processes started in sessions of their own, every one killed when the job ends.

    Use it as a context manager: leaving the block (normally, on a failed
    assertion or on a timeout) kills the process group of each process still
    running and waits for it, so nothing outlives the test.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self._processes: list[subprocess.Popen[bytes]] = []
        self._exited_at: dict[int, float] = {}
        self._exited_at_wall: dict[int, float] = {}
        self._names: list[str] = []

    def start(self, script: str, config: dict[str, Any], env: dict[str, str]) -> int:
        """Starts ``script`` with ``config``; returns the process's index in the job."""
        index = len(self._processes)
        name = f"{Path(script).stem}-{index}"
        config = {
            **config,
            "report_path": str(self.directory / f"{name}.json"),
            "max_seconds": MAX_PROCESS_SECONDS,
        }
        with open(self.directory / f"{name}.log", "wb") as log:
            process = subprocess.Popen(
                [sys.executable, str(HERE / script), json.dumps(config)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._processes.append(process)
        self._names.append(name)
        return index

    def pid(self, index: int) -> int:
        return self._processes[index].pid

    def wait(self, indices: list[int], timeout_s: float) -> bool:
        """Waits until the given processes exited or ``timeout_s`` passed; True if all exited."""
        deadline = time.monotonic() + timeout_s
        while True:
            now = time.monotonic()
            for i in indices:
                if i not in self._exited_at and self._processes[i].poll() is not None:
                    self._exited_at[i] = now
                    self._exited_at_wall[i] = time.time()
            if all(i in self._exited_at for i in indices):
                return True
            if now >= deadline:
                return False
            time.sleep(0.05)

    def result(self, index: int) -> Finished:
        process, name = self._processes[index], self._names[index]
        report_path = self.directory / f"{name}.json"
        report = json.loads(report_path.read_text()) if report_path.exists() else None
        lines = (self.directory / f"{name}.log").read_text(errors="replace").splitlines()
        log = "\n".join(line for line in lines if not any(n in line for n in NOISE))[-4000:]
        end = self._exited_at.get(index, time.monotonic())
        wall = self._exited_at_wall.get(index)
        return Finished(process.poll(), end - self.started, wall, report, log)

    def kill(self, index: int) -> None:
        """SIGKILLs the process group of one process (also when it is stopped)."""
        process = self._processes[index]
        if process.poll() is not None:
            return  # reaped already: its pid may belong to someone else by now
        with suppress(ProcessLookupError):  # exited since the poll
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def close(self) -> None:
        for index in range(len(self._processes)):
            self.kill(index)


@contextmanager
def job(directory: Path) -> Iterator[Job]:
    """A ``Job`` whose processes are all killed and reaped when the block ends."""
    running = Job(directory)
    try:
        yield running
    finally:
        running.close()


def lost_port_race(results: list[Finished]) -> bool:
    """Whether a job failed only because a chosen port was taken before its server bound it."""
    return any(any(m in r.log or m in str(r.report) for m in PORT_TAKEN) for r in results)
