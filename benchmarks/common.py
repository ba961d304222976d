"""Timing, bandwidth, matmul peak and reporting shared by the benchmark scripts."""

import dataclasses
import json
import os
import platform
import statistics
import subprocess
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
    bytes_moved: int  # the minimum memory traffic of the op (reads + writes); 0 if compute-bound
    bound_ms: float   # bytes_moved at the measured copy bandwidth, or flops at the measured matmul peak
    compare_to: str = ""   # "impl/variant" of the row this one is compared with
    speedup: float = float("nan")  # compare_to's ms / this ms
    flops: float = 0  # the op's arithmetic, for compute-bound rows (0 = memory-bound row)
    peak_rss_mb: float = float("nan")  # growth of peak RSS during the call, where measured
    note: str = ""    # anything else measured, printed at the end of the row

    @property
    def gbps(self):
        return self.bytes_moved / self.ms / 1e6

    @property
    def gflops(self):
        return self.flops / self.ms / 1e6

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


def matmul_flops(torch, n, repeats):
    """Flops per second of an n x n x n float32 matmul (torch's, or NumPy's when
    torch is None), the yardstick for compute-bound kernels: the best of the
    repeats, since a peak is what the machine can do, and a median taken while
    it is busy would flatter everything measured against it."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    if torch is not None:
        a, b = torch.from_numpy(a), torch.from_numpy(b)
    c = a @ b
    mm = torch.mm if torch is not None else np.matmul
    mm(a, b, out=c)
    seconds = []
    for _ in range(max(repeats, 5)):
        start = time.perf_counter()
        mm(a, b, out=c)
        seconds.append(time.perf_counter() - start)
    return 2 * n**3 / min(seconds)


# The end of every peak-memory script: the script before it sets up its inputs
# and defines call(); this runs call() once, then prints the growth of peak
# RSS in MB during that first call and the seconds of a second call.
_PEAK_MEMORY_TAIL = """
def peak_rss_kib():  # not ru_maxrss: exec keeps the forking parent's, when larger
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))

before = peak_rss_kib()
call()
grown = peak_rss_kib() - before
start = time.perf_counter()
call()
print(grown * 1024 / 1e6, time.perf_counter() - start)
"""


def peak_memory_in_new_process(setup, args):
    """(MB of peak RSS growth, seconds) of `setup`'s call() in a fresh Python
    process, run from the repository root with `args` as sys.argv[1:]."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", setup + _PEAK_MEMORY_TAIL, *map(str, args)],
                          capture_output=True, text=True, cwd=root)
    if proc.returncode:
        raise RuntimeError(f"peak memory run {args} failed:\n{proc.stderr}")
    mb, seconds = map(float, proc.stdout.split())
    return mb, seconds


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


def compare(results, op, impl_variant, reference_variant, shape=None):
    """Sets speedup of row `impl_variant` relative to row `reference_variant` ("impl/variant"),
    among the rows of `op` (and of `shape`, if given)."""
    rows = {f"{r.impl}/{r.variant}": r for r in results if r.op == op and shape in (None, r.shape)}
    if impl_variant in rows and reference_variant in rows:
        rows[impl_variant].compare_to = reference_variant
        rows[impl_variant].speedup = rows[reference_variant].ms / rows[impl_variant].ms


def _speedup(r):
    text = f"{r.speedup:5.2f}x vs {r.compare_to}" if r.compare_to else ""
    return f"{text}; {r.note}" if text and r.note else text or r.note


# The two kinds of rows: (title of the rate column, its value, title of the
# bound column, its value as printed) and the widths of op, shape, impl/variant, ms.
_MEMORY_COLUMNS = (("GB/s", lambda r: f"{r.gbps:7.1f}"), ("x bound", lambda r: f"{r.vs_bound:8.2f}"), (22, 10, 24, 3))
_COMPUTE_COLUMNS = (("GFLOP/s", lambda r: f"{r.gflops:7.1f}"), ("% peak", lambda r: f"{100 / r.vs_bound:7.0f}%"),
                    (31, 16, 34, 1))


def _print_rows(rows, columns):
    (rate, rate_text), (bound, bound_text), (op_w, shape_w, impl_w, digits) = columns
    header = f"{'op':<{op_w}} {'shape':<{shape_w}} {'impl/variant':<{impl_w}} {'ms':>8} {rate:>7} {bound:>8}  speedup"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.op:<{op_w}} {r.shape:<{shape_w}} {r.impl + '/' + r.variant:<{impl_w}} {r.ms:8.{digits}f} "
              f"{rate_text(r)} {bound_text(r)}  {_speedup(r)}")


def print_table(results):
    """Memory-bound rows (GB/s, x bound), then compute-bound rows (GFLOP/s, % of the matmul peak)."""
    memory_bound = [r for r in results if not r.flops]
    compute_bound = [r for r in results if r.flops]
    if memory_bound:
        _print_rows(memory_bound, _MEMORY_COLUMNS)
    if compute_bound:
        if memory_bound:
            print()
        _print_rows(compute_bound, _COMPUTE_COLUMNS)


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
        if r.flops:
            row.update(gflops=round(r.gflops, 3), fraction_of_peak=round(1 / r.vs_bound, 3))
        rows.append(row)
    with open(path, "w") as f:
        json.dump({"machine": meta, "results": rows}, f, indent=1, default=float)


def write_labelled_csvs(folder, names, rows, train_share):
    """rows (text, label) split into a training and an evaluation CSV with a
    text,label header; returns their paths."""
    import csv

    paths = [os.path.join(folder, name) for name in names]
    cut = int(len(rows) * train_share)
    for path, part in zip(paths, (rows[:cut], rows[cut:])):
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(part)
    return paths
