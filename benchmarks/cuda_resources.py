"""What the CUDA compiler gives each kernel, and the occupancy that follows.

With no GPU to time the kernels on, this is the evidence about their GPU
performance we can produce: for every kernel in csrc/cuda/ and each target
architecture, the registers per thread, static shared memory, stack frame and
register spills that ptxas reports, and the resident blocks and warps per SM
on an A100 (sm_80) or H100 (sm_90) that those resources allow at the block
size the kernel declares with __launch_bounds__.

    python -m benchmarks.cuda_resources [--arch 80 90] [--files gelu.cu ...] [--json out.json]

Needs nvcc (and ptxas beside it); reads the sources, not the installed module.
Dynamic shared memory, set at launch, is not in the compiler's report; the
"smem" column is the static part.
"""

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CUDA_DIR = ROOT / "csrc" / "cuda"

# Per-SM limits (CUDA C Programming Guide, "Compute Capabilities" table).
GPUS = {
    "80": dict(name="A100", warps=64, blocks=32, registers=65536, shared=164 * 1024),
    "90": dict(name="H100", warps=64, blocks=32, registers=65536, shared=228 * 1024),
}
REGISTER_UNIT = 256  # registers are allocated to a warp in units of 256
SHARED_RESERVED = 1024  # per block, reserved by the system since sm_80


def occupancy(gpu, threads, registers, shared):
    """(blocks, warps) resident per SM for a kernel with these resources."""
    warps = math.ceil(threads / 32)
    per_warp = math.ceil(max(registers, 1) * 32 / REGISTER_UNIT) * REGISTER_UNIT
    limits = [gpu["blocks"], gpu["warps"] // warps, (gpu["registers"] // per_warp) // warps]
    if shared:
        limits.append(gpu["shared"] // (shared + SHARED_RESERVED))
    blocks = max(min(limits), 0)
    return blocks, blocks * warps


def launch_bounds(ptx):
    """{mangled kernel name: max threads per block} from .maxntid in PTX."""
    bounds = {}
    for match in re.finditer(r"\.entry\s+(\w+)\s*\((.*?)\)\s*((?:\.\w+[^\n{]*\n\s*)*)\{", ptx, re.S):
        directives = match.group(3)
        ntid = re.search(r"\.maxntid\s+(\d+),\s*(\d+),\s*(\d+)", directives)
        bounds[match.group(1)] = math.prod(int(n) for n in ntid.groups()) if ntid else None
    return bounds


def parse_ptxas(report):
    """{mangled name: resources} from ``ptxas -v`` output."""
    kernels, name = {}, None
    for line in report.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)'", line):
            name = m.group(1)
            kernels[name] = dict(registers=0, shared=0, stack=0, spill_stores=0, spill_loads=0)
        elif name and (m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                                      line)):
            kernels[name].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif name and (m := re.search(r"Used (\d+) registers", line)):
            kernels[name]["registers"] = int(m.group(1))
            if s := re.search(r"(\d+) bytes smem", line):
                kernels[name]["shared"] = int(s.group(1))
    return kernels


def demangle(names):
    if not names or not shutil.which("c++filt"):
        return {n: n for n in names}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.splitlines()))


def short_name(demangled):
    """The kernel's name without namespaces and parameter list, with template arguments."""
    name = demangled.replace("(anonymous namespace)::", "")
    name = re.sub(r"^void ", "", re.sub(r"\(.*\)$", "", name))
    return re.sub(r"\b(?:\w+::)+", "", name)


def compile_report(source, arch, nvcc):
    """Resources of every kernel in one .cu file for sm_<arch>."""
    with tempfile.TemporaryDirectory() as tmp:
        ptx_path = Path(tmp) / "kernels.ptx"
        subprocess.run([nvcc, "-std=c++17", f"-arch=compute_{arch}", "-ptx", f"-I{ROOT / 'csrc' / 'include'}",
                        f"-I{CUDA_DIR}", str(source), "-o", str(ptx_path)], check=True, capture_output=True)
        ptxas = Path(nvcc).with_name("ptxas")
        done = subprocess.run([str(ptxas) if ptxas.exists() else "ptxas", "-v", f"-arch=sm_{arch}", str(ptx_path),
                               "-o", str(Path(tmp) / "kernels.cubin")], check=True, capture_output=True, text=True)
        kernels = parse_ptxas(done.stdout + done.stderr)
        bounds = launch_bounds(ptx_path.read_text())
    names = demangle(list(kernels))
    rows = []
    for mangled, res in kernels.items():
        threads = bounds.get(mangled)
        row = dict(file=source.name, arch=f"sm_{arch}", kernel=short_name(names[mangled]), threads=threads, **res)
        if threads:
            row["blocks_per_sm"], warps = occupancy(GPUS[arch], threads, res["registers"], res["shared"])
            row["occupancy"] = warps / GPUS[arch]["warps"]
        rows.append(row)
    return rows


def format_table(rows):
    header = (f"{'kernel':<58} {'arch':<6} {'thr':>4} {'regs':>4} {'smem':>6} {'stack':>5} {'spill':>7} "
              f"{'blk/SM':>6} {'occ':>5}")
    lines = [header, "-" * len(header)]
    for r in rows:
        spill = f"{r['spill_stores']}/{r['spill_loads']}"
        occ = f"{r['occupancy']:.0%}" if "occupancy" in r else "-"
        lines.append(f"{r['kernel'][:58]:<58} {r['arch']:<6} {r['threads'] or '-':>4} {r['registers']:>4} "
                     f"{r['shared']:>6} {r['stack']:>5} {spill:>7} {r.get('blocks_per_sm', '-'):>6} {occ:>5}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["80", "90"], choices=sorted(GPUS))
    parser.add_argument("--files", nargs="+", help="file names in csrc/cuda/ (default: every kernel file)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        sys.exit("nvcc was not found on the PATH; the resource report needs the CUDA compiler")
    files = [CUDA_DIR / f for f in args.files] if args.files else sorted(CUDA_DIR.glob("*.cu"))
    rows = [row for arch in args.arch for f in files for row in compile_report(f, arch, nvcc)]
    print(format_table(rows))
    spilling = [r["kernel"] for r in rows if r["spill_stores"] or r["spill_loads"]]
    print(f"\n{len(rows)} kernels; register spills in: {', '.join(sorted(set(spilling))) or 'none'}")
    print("blk/SM and occ count registers and static shared memory only: kernels that size their shared memory "
          "at launch (the attention kernels) fit fewer blocks, as each file's header comment works out.")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
