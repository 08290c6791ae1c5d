"""How many cores this process may use (CPU affinity and the cgroup's CPU quota), how many
workers `VAE_WORKERS` means, and the threads each process gets so that workers x threads does
not exceed the cores."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from service.settings import Settings

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_paths(proc_cgroup: str) -> dict[str, str]:
    """/proc/self/cgroup as {controller: path}; cgroup v2's single line under ""."""
    paths: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(","):
                paths[controller] = parts[2]
    return paths


def _walk_up(root: Path, relative: str) -> list[Path]:
    """`root/relative` and each folder above it up to `root`: a limit may be set on any of them
    (in a container, whose cgroup namespace shows `/`, only `root` itself)."""
    folder = root / relative.lstrip("/")
    folders = [folder, *folder.parents]
    return [f for f in folders if f == root or root in f.parents]


def _v2_quota(root: Path, relative: str) -> float | None:
    limits = []
    for folder in _walk_up(root, relative):
        try:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
        except (OSError, ValueError):
            continue
        if quota != "max" and int(period) > 0:
            limits.append(int(quota) / int(period))
    return min(limits, default=None)


def _v1_quota(root: Path, relative: str) -> float | None:
    limits = []
    for mount in ("cpu,cpuacct", "cpu"):
        for folder in _walk_up(root / mount, relative):
            try:
                quota = int((folder / "cpu.cfs_quota_us").read_text())
                period = int((folder / "cpu.cfs_period_us").read_text())
            except (OSError, ValueError):
                continue
            if quota > 0 and period > 0:
                limits.append(quota / period)
        if limits:
            break
    return min(limits, default=None)


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: str | None = None) -> float | None:
    """The CPU quota of this process's cgroup in cores (cgroup v2 `cpu.max`, else v1
    `cpu.cfs_quota_us / cpu.cfs_period_us`), None when there is none."""
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    paths = _cgroup_paths(proc_cgroup)
    if "" in paths:
        quota = _v2_quota(root, paths[""])
        if quota is not None:
            return quota
    if "cpu" in paths:
        return _v1_quota(root, paths["cpu"])
    return None


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), lowered to the cgroup's CPU quota
    rounded up (a quota of 1.5 cores runs two threads at 75 %), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def worker_count(settings: Settings, cores: int | None = None) -> int:
    """VAE_WORKERS as a number: `auto` is one per available core."""
    if settings.workers == "auto":
        return cores if cores is not None else available_cores()
    return settings.workers


@dataclass(frozen=True)
class ThreadBudget:
    """The threads of one process (the only one, or one worker): each share of `cores` runs one
    onnxruntime call at a time with its intra-op threads."""

    cores: int  # available to the whole service
    workers: int
    intra_op_threads: int  # per onnxruntime call
    inference_threads: int  # the pool that runs large batches (each call intra_op_threads)
    decode_threads: int  # decoding uploads

    @classmethod
    def of(cls, settings: Settings, cores: int | None = None) -> ThreadBudget:
        cores = cores if cores is not None else available_cores()
        workers = worker_count(settings, cores)
        share = max(1, cores // workers)  # each process's cores
        intra = settings.intra_op_threads or share
        return cls(
            cores=cores,
            workers=workers,
            intra_op_threads=intra,
            inference_threads=max(1, share // intra),
            decode_threads=settings.decode_threads or max(1, share // 2),
        )

    def oversubscribed(self, settings: Settings) -> list[str]:
        """One line per explicit setting that asks for more threads than there are cores."""
        problems = []
        if settings.workers != "auto" and self.workers > self.cores:
            problems.append(
                f"VAE_WORKERS={self.workers} on {self.cores} available cores: workers will "
                "wait for each other's cores; set VAE_WORKERS=auto (one per core)"
            )
        for name, per_process in (
            ("VAE_INTRA_OP_THREADS", settings.intra_op_threads),
            ("VAE_DECODE_THREADS", settings.decode_threads),
        ):
            total = self.workers * per_process
            explicit = name.removeprefix("VAE_").lower() in settings.model_fields_set
            if explicit and per_process and total > self.cores:
                problems.append(
                    f"{self.workers} worker{'s' if self.workers > 1 else ''} x {name}="
                    f"{per_process} = {total} threads on {self.cores} available cores: they "
                    f"will contend for the cores (oversubscription); set {name}=0 to size it "
                    "from the cores, or lower VAE_WORKERS"
                )
        return problems
