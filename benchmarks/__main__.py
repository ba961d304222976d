"""python -m benchmarks [--only NAME ...] [--threads N] [--repeats R] [--json PATH]

Prints one table of every kernel beside its reference (torch where installed),
timed in the same process with the same thread count, and writes it as JSON.
"x bound" is the time over the time the op's memory traffic needs at the copy
bandwidth measured at the start of the run (1.0 = as fast as a copy); compute-
bound ops (attention, loss) show GFLOP/s and the % of a float32 matmul's, measured
in the same run.
"""

import argparse
import os
import time

import ssl_core

from benchmarks import (bench_attention, bench_finetune, bench_gelu, bench_generate, bench_hf_patch,
                        bench_layer_norm, bench_loss, bench_pretrain, bench_train)
from benchmarks.common import copy_bandwidth, load_torch, machine_description, print_table, write_json

SUITES = {"layer_norm": bench_layer_norm, "gelu": bench_gelu, "attention": bench_attention, "loss": bench_loss,
          "train": bench_train, "pretrain": bench_pretrain, "finetune": bench_finetune,
          "generate": bench_generate, "hf_patch": bench_hf_patch}


def main():
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[2])
    parser.add_argument("--only", nargs="+", choices=sorted(SUITES), default=sorted(SUITES))
    parser.add_argument("--threads", type=int, default=ssl_core.get_num_threads())
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per row (median)")
    parser.add_argument("--json", default=None, help="where to write results (default benchmarks/results/)")
    args = parser.parse_args()

    ssl_core.set_num_threads(args.threads)
    torch = load_torch(args.threads)
    copy_bps = copy_bandwidth(4096 * 3072 * 4, args.repeats)
    meta = machine_description(args.threads, copy_bps / 1e9)
    print(f"ssl_core {meta['ssl_core']}, {meta['cpu_isa']}, {args.threads} threads, "
          f"torch {torch.__version__ if torch else 'absent'}, copy bandwidth {copy_bps / 1e9:.1f} GB/s\n")

    results = []
    for name in args.only:
        results += SUITES[name].run(torch, copy_bps, args.repeats)
    print_table(results)

    path = args.json
    if path is None:
        os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
        path = os.path.join(os.path.dirname(__file__), "results", time.strftime("bench-%Y%m%d-%H%M%S.json"))
    write_json(path, meta, results)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
