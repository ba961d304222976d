"""benchmarks/cuda_resources.py: the compiler's resource report and the
occupancy computed from it."""

import shutil

import pytest

from benchmarks import cuda_resources as cr

PTXAS = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN8ssl_core4cuda6kernelEPf' for 'sm_80'
ptxas info    : Function properties for _ZN8ssl_core4cuda6kernelEPf
    16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 96 registers, used 1 barriers, 20480 bytes smem, 368 bytes cmem[0]
ptxas info    : Compiling entry function '_Z5plainPf' for 'sm_80'
ptxas info    : Function properties for _Z5plainPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers, used 0 barriers, 356 bytes cmem[0]
"""

PTX = """\
.visible .entry _ZN8ssl_core4cuda6kernelEPf(
\t.param .u64 _ZN8ssl_core4cuda6kernelEPf_param_0
)
.maxntid 128, 1, 1
{
\tret;
}
.visible .entry _Z5plainPf(
\t.param .u64 _Z5plainPf_param_0
)
{
\tret;
}
"""


def test_ptxas_report_is_parsed():
    kernels = cr.parse_ptxas(PTXAS)
    assert kernels["_ZN8ssl_core4cuda6kernelEPf"] == dict(registers=96, shared=20480, stack=16, spill_stores=8,
                                                          spill_loads=4)
    assert kernels["_Z5plainPf"] == dict(registers=8, shared=0, stack=0, spill_stores=0, spill_loads=0)
    assert cr.launch_bounds(PTX) == {"_ZN8ssl_core4cuda6kernelEPf": 128, "_Z5plainPf": None}


def test_kernel_names_lose_namespaces_and_parameters():
    assert cr.short_name("void ssl_core::cuda::(anonymous namespace)::backward_kernel<64, true>(float const*, int)") \
        == "backward_kernel<64, true>"
    assert cr.short_name("ssl_core::cuda::gelu_kernel(float*)") == "gelu_kernel"


def test_occupancy_follows_the_programming_guide():
    a100, h100 = cr.GPUS["80"], cr.GPUS["90"]
    # 96 registers x 128 threads: 4 warps of 3072 registers, 5 blocks fit 65536 registers.
    assert cr.occupancy(a100, 128, 96, 0) == (5, 20)
    # 20 KB of shared memory + 1 KB reserved: 7 blocks in 164 KB, 10 in H100's 228 KB; registers allow 5.
    assert cr.occupancy(a100, 128, 32, 20480) == (7, 28)
    assert cr.occupancy(h100, 128, 32, 20480) == (10, 40)
    # Small kernels are limited by the 64 warps of an SM.
    assert cr.occupancy(a100, 256, 16, 0) == (8, 64)
    # Registers round up to 256 per warp: 33 registers count as 40.
    assert cr.occupancy(a100, 1024, 33, 0) == (1, 32)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc, which our machines and CI have")
def test_report_of_a_real_kernel_file(capsys):
    rows = cr.main(["--arch", "80", "--files", "gelu.cu"])
    assert rows and all(r["arch"] == "sm_80" and r["file"] == "gelu.cu" for r in rows)
    assert all(r["registers"] > 0 for r in rows)
    assert all(r["threads"] for r in rows), "every kernel should declare its block size with __launch_bounds__"
    assert "register spills in: none" in capsys.readouterr().out
