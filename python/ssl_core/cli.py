"""The ``ssl-core`` command."""

import argparse
import os
import platform
import sys

import ssl_core
from ssl_core import _C


def info() -> str:
    """What this installation is: version, build, CPU code path, threads, CUDA."""
    rows = [
        ("ssl_core", ssl_core.__version__),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("compiler", _C.COMPILER),
        ("cpu", f"{platform.machine()}, {os.cpu_count()} logical cores"),
        ("cpu code path", f"{ssl_core.get_cpu_isa()} (supported: {', '.join(ssl_core.supported_cpu_isas())})"),
        ("threads", f"{ssl_core.get_num_threads()} (OpenMP {'on' if _C.WITH_OPENMP else 'off'})"),
        ("WITH_CUDA", str(ssl_core.WITH_CUDA)),
        ("cuda devices", str(_C.cuda_device_count())),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ssl-core", description=ssl_core.__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="show the build and runtime configuration")
    args = parser.parse_args(argv)
    if args.command == "info":
        print(info())
    return 0


if __name__ == "__main__":
    sys.exit(main())
