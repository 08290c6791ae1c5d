"""Resident memory of the service's processes, for the start-up log line: RSS counts every page
a process maps (shared libraries and all), PSS divides each shared page among the processes
that map it, so that the PSS of all of them adds up to what the service takes."""

from __future__ import annotations

from pathlib import Path


def _kib(path: Path, field: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_pss_mib(pid: int) -> tuple[float, float] | None:
    """(RSS, PSS) of a process in MiB; None where /proc cannot tell (not Linux, gone)."""
    rss = _kib(Path(f"/proc/{pid}/status"), "VmRSS:")
    pss = _kib(Path(f"/proc/{pid}/smaps_rollup"), "Pss:")
    if rss is None or pss is None:
        return None
    return rss / 1024, pss / 1024


def memory_line(processes: dict[str, int]) -> str:
    """`supervisor RSS 90 MiB (PSS 60), worker 1 ...; total RSS ..., PSS ...` for the
    processes named (label: pid)."""
    parts = []
    total_rss = total_pss = 0.0
    for label, pid in processes.items():
        sizes = rss_pss_mib(pid)
        if sizes is None:
            continue
        rss, pss = sizes
        total_rss += rss
        total_pss += pss
        parts.append(f"{label} RSS {rss:.0f} MiB (PSS {pss:.0f})")
    if not parts:
        return "memory: not known on this platform"
    return (
        f"memory: {', '.join(parts)}; total RSS {total_rss:.0f} MiB, PSS {total_pss:.0f} MiB "
        "(PSS shares the pages several processes map, such as the libraries, among them: its "
        "total is what the service takes)"
    )
