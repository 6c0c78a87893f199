"""Timing, peak-memory and machine-description tools shared by the benchmark scripts.

Benchmarks here print ratios of times measured in one run on one machine: absolute seconds on a shared CPU
move by tens of percent from run to run, ratios within one run much less.
"""

import os
import platform
import re
import resource
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

# The package lives in the repository root (flat layout of a Hub model folder); make the scripts runnable
# from anywhere without installing it.
REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
if str(REPOSITORY_ROOT) not in sys.path:
    sys.path.insert(0, str(REPOSITORY_ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field):
    match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    return int(match.group(1)) if match else None


def page_faults():
    """Minor page faults of this process so far: memory it touched for the first time (or again after giving it
    back to the system). A run that faults many pages is still growing its allocator's pools."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def rss_mib():
    """Resident set size of this process now, MiB."""
    value = _status_kib("VmRSS")
    if value is None:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    return value / 1024


class PeakRSS:
    """Peak resident memory of this process over a block, through Linux's high-water mark `VmHWM`.

    `reset()` writes 5 to `/proc/self/clear_refs`, which sets the high-water mark back to the current RSS
    (Linux >= 4.0); `peak_mib()` reads it. This is what the operating system counts: tensors, the allocator's
    cached blocks, Python objects, thread stacks, libraries paged in for the first time. It covers allocations
    made by torch's C++ side, which tracemalloc never sees. Where clear_refs cannot be written the mark is the
    process's lifetime peak and `resettable` is False.
    """

    def __init__(self):
        self.resettable = True
        self.reset()

    def reset(self):
        try:
            _CLEAR_REFS.write_text("5")
        except OSError:
            self.resettable = False
        self.start_mib = rss_mib()

    def peak_mib(self):
        value = _status_kib("VmHWM")
        return value / 1024 if value is not None else rss_mib()

    def delta_mib(self):
        """Peak during the block minus the RSS at its start."""
        return self.peak_mib() - self.start_mib


class StageTimer:
    """Accumulates wall-clock seconds per named stage over repeats; `with timer("trunk"): ...`. With
    `synchronize` (e.g. `torch.cuda.synchronize`), it is called at both ends of each block, so that a device's
    queued work is counted in the block that queued it."""

    def __init__(self, synchronize=None):
        self.samples = {}
        self.synchronize = synchronize or (lambda: None)

    @contextmanager
    def __call__(self, name):
        self.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.synchronize()
            self.samples.setdefault(name, []).append(time.perf_counter() - start)

    def median(self, name):
        return statistics.median(self.samples[name])


def alternate(functions, repeats):
    """Median seconds of each function, runs interleaved (after one warm-up each) so drift hits all alike."""
    for function in functions.values():
        function()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_description(threads):
    lines = [
        f"cpu: {cpu_model()}, nproc {os.cpu_count()}, torch threads {threads}",
        f"torch {torch.__version__}, python {platform.python_version()}, {platform.system()} {platform.release()}",
        f"cuda available: {torch.cuda.is_available()}",
    ]
    try:
        load = os.getloadavg()
        lines.append(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    except OSError:
        pass
    return "\n".join(lines)


def set_threads(threads):
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass
