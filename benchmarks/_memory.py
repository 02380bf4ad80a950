"""Resident-set readings the memory benchmarks share (Linux; None or False elsewhere).

Imported as ``_memory``: each benchmark runs as a script (and its children as
``python benchmarks/<name>.py``), so this directory is first on ``sys.path``.
"""

from __future__ import annotations


def status_kb(field: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (Linux), or None."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Resets the resident-set high-water mark (Linux >= 4.0); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return False
    return True
