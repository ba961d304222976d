"""Timing, bandwidth and reporting shared by the benchmark scripts."""

import dataclasses
import json
import platform
import statistics
import sys
import time

import numpy as np

import ssl_core
from ssl_core import _C


@dataclasses.dataclass
class Result:
    op: str          # what was timed, e.g. "layer_norm fwd+bwd"
    shape: str       # problem size, e.g. "4096x768"
    impl: str        # "ssl_core", "torch", ...
    variant: str     # how it was called: "out=" (no allocation), "allocating", "autograd", ...
    ms: float        # median wall time of one call
    bytes_moved: int  # the minimum memory traffic of the op (reads + writes)
    bound_ms: float   # bytes_moved at the measured copy bandwidth
    compare_to: str = ""   # "impl/variant" of the row this one is compared with
    speedup: float = float("nan")  # compare_to's ms / this ms

    @property
    def gbps(self):
        return self.bytes_moved / self.ms / 1e6

    @property
    def vs_bound(self):
        return self.ms / self.bound_ms


def median_seconds(fn, repeats, warmup=3):
    """Median wall time of fn() over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def copy_bandwidth(nbytes, repeats):
    """Bytes per second (read + written) of a multi-threaded copy of `nbytes`,
    the yardstick for memory-bound kernels: a kernel that moves B bytes cannot
    beat B / copy_bandwidth by much."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    seconds = median_seconds(lambda: _C.copy_memory(dst, src), repeats)
    return 2 * src.nbytes / seconds


def load_torch(threads):
    """torch with `threads` threads, or None (said loudly) when not installed."""
    try:
        import torch
    except ImportError:
        print("torch is not installed: comparing against nothing. "
              "Install the CPU build (pip install torch==2.13.0 here) for the reference.",
              file=sys.stderr)
        return None
    torch.set_num_threads(threads)
    return torch


def compare(results, op, impl_variant, reference_variant):
    """Sets speedup of row `impl_variant` relative to row `reference_variant` ("impl/variant")."""
    rows = {f"{r.impl}/{r.variant}": r for r in results if r.op == op}
    if impl_variant in rows and reference_variant in rows:
        rows[impl_variant].compare_to = reference_variant
        rows[impl_variant].speedup = rows[reference_variant].ms / rows[impl_variant].ms


def print_table(results):
    header = f"{'op':<22} {'shape':<10} {'impl/variant':<24} {'ms':>8} {'GB/s':>7} {'x bound':>8}  speedup"
    print(header)
    print("-" * len(header))
    for r in results:
        speedup = f"{r.speedup:5.2f}x vs {r.compare_to}" if r.compare_to else ""
        print(f"{r.op:<22} {r.shape:<10} {r.impl + '/' + r.variant:<24} {r.ms:8.3f} "
              f"{r.gbps:7.1f} {r.vs_bound:8.2f}  {speedup}")


def machine_description(threads, copy_gbps):
    return {
        "ssl_core": ssl_core.__version__,
        "cpu_isa": ssl_core.get_cpu_isa(),
        "threads": threads,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "copy_bandwidth_gbps": round(copy_gbps, 2),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_json(path, meta, results):
    rows = []
    for r in results:
        row = dataclasses.asdict(r)
        row.update(gbps=round(r.gbps, 3), vs_bound=round(r.vs_bound, 3))
        rows.append(row)
    with open(path, "w") as f:
        json.dump({"machine": meta, "results": rows}, f, indent=1, default=float)
