"""The CPU emulator of the CUDA execution model (csrc/simt/) against the CUDA
programming guide's rules: warp collectives computed lane by lane in Python,
and planted bugs that a GPU would run silently (or hang on) reported as faults.
"""

import numpy as np
import pytest

from reference import bfloat16_bits

FULL = 0xFFFFFFFF


def expected_collective(kind, values, mask, arg, width):
    """Each lane's result as the CUDA programming guide defines it (PTX shfl
    clamping: a source outside the lane's segment returns its own value)."""
    out = {}
    lanes = [lane for lane in range(32) if mask >> lane & 1]
    votes = [values[lane] != 0 for lane in lanes]
    for lane in lanes:
        segment = lane - lane % width
        if kind == "shfl":
            src = segment + arg % width
        elif kind == "shfl_up":
            src = lane - arg if lane - arg >= segment else lane
        elif kind == "shfl_down":
            src = lane + arg if lane + arg < segment + width else lane
        elif kind == "shfl_xor":
            src = lane ^ arg if (lane ^ arg) < segment + width else lane
        if kind.startswith("shfl"):
            out[lane] = values[src]
        elif kind == "ballot":
            bits = sum(1 << other for other, vote in zip(lanes, votes) if vote)
            out[lane] = bits - (1 << 32) if bits >= 1 << 31 else bits  # the kernel stores it as an int
        elif kind == "any":
            out[lane] = int(any(votes))
        elif kind == "all":
            out[lane] = int(all(votes))
        else:
            out[lane] = 1
    return out


@pytest.mark.parametrize("kind", ["shfl", "shfl_up", "shfl_down", "shfl_xor"])
@pytest.mark.parametrize("width", [32, 16, 8, 1])
@pytest.mark.parametrize("arg", [0, 1, 3, 17, 31])
def test_shuffles_match_the_programming_guide(simt, rng, kind, width, arg):
    values = rng.integers(-1000, 1000, 32).astype(np.int32)
    got = simt.self_test.warp_collective(kind, values, FULL, arg, width)
    want = expected_collective(kind, values, FULL, arg, width)
    assert [int(got[lane]) for lane in range(32)] == [int(want[lane]) for lane in range(32)]


@pytest.mark.parametrize("kind", ["ballot", "any", "all", "syncwarp"])
@pytest.mark.parametrize("mask", [FULL, 0x0000FFFF, 0x80000001, 0x00F0F0F0])
def test_votes_over_partial_masks(simt, rng, kind, mask):
    values = (rng.random(32) < 0.5).astype(np.int32)
    got = simt.self_test.warp_collective(kind, values, mask, fill=-7)
    want = expected_collective(kind, values, mask, 0, 32)
    for lane in range(32):
        assert int(got[lane]) == (want[lane] if lane in want else -7), lane


def test_shuffle_within_a_partial_mask(simt):
    values = np.arange(32, dtype=np.int32) * 10
    got = simt.self_test.warp_collective("shfl_xor", values, 0x0000FFFF, 1, 32, fill=-1)
    assert list(got[:16]) == [10 * (lane ^ 1) for lane in range(16)]
    assert list(got[16:]) == [-1] * 16


@pytest.mark.parametrize("threads", [32, 64, 96, 1024])
def test_block_sum_with_barrier_is_schedule_independent(simt, simt_schedule, rng, threads):
    x = rng.standard_normal(3000).astype(np.float32)
    sums = []
    for schedule in ("forward", "reverse"):
        simt_schedule(schedule)
        sums.append(simt.self_test.block_sum(x, threads, True))
    assert sums[0] == sums[1]
    np.testing.assert_allclose(sums[0], x.astype(np.float64).sum(), rtol=1e-4, atol=1e-3)


def test_missing_barrier_shows_as_a_race(simt, simt_schedule, rng):
    """Without __syncthreads thread 0 reads partial sums that the other threads
    have not written yet in one schedule, and has them in none or all in the other."""
    x = rng.standard_normal(3000).astype(np.float32)
    sums = []
    for schedule in ("forward", "reverse"):
        simt_schedule(schedule)
        sums.append(simt.self_test.block_sum(x, 64, False))
    truth = x.astype(np.float64).sum()
    assert sums[0] != sums[1]
    assert not all(abs(s - truth) < 1e-3 for s in sums)


@pytest.mark.parametrize(
    "planted, message",
    [
        ("divergent_barrier",
         r"divergent __syncthreads: thread \(0,0,0\) waits at self_test.cu:\d+, thread \(16,0,0\)"),
        ("lane_outside_mask",
         r"__shfl_xor_sync at self_test.cu:\d+ in warp 0: lane 16 calls it but is not in its mask"),
        ("exited_lane_in_mask", r"mask names lane 16, which has exited"),
        ("source_lane_outside_mask", r"lane 0 reads lane 20, which is not in the mask"),
        ("mismatched_collectives", r"mismatched warp collectives in warp 0"),
        ("deadlock", r"deadlock: no thread can go on\n  threads 0-15 at __syncthreads \(self_test.cu:\d+\)\n"
                     r"  threads 16-31 at __shfl_xor_sync\(mask 0xffffffff\)"),
    ],
)
def test_planted_bugs_are_reported(simt, planted, message):
    with pytest.raises(simt.KernelFault, match=message):
        getattr(simt.self_test, planted)()
    # The emulator is usable again after a fault.
    assert simt.self_test.block_sum(np.ones(10, np.float32), 32, True) == 10.0


def test_kernel_fault_is_a_runtime_error(simt):
    assert issubclass(simt.KernelFault, RuntimeError)


@pytest.mark.parametrize("nbytes", [4, 128, 4096])
def test_write_past_dynamic_shared_memory_is_reported(simt, nbytes):
    with pytest.raises(simt.KernelFault, match=f"wrote outside its {nbytes} bytes of dynamic shared memory"):
        simt.self_test.dynamic_shared_overflow(nbytes)


def test_dynamic_shared_memory_above_48k_needs_opt_in(simt):
    with pytest.raises(RuntimeError, match="65536 bytes of dynamic shared memory requested, 49152 allowed"):
        simt.self_test.too_much_dynamic_shared()
    # The error was consumed by the check; the next launch starts clean.
    assert simt.self_test.block_sum(np.ones(5, np.float32), 32, True) == 5.0


def test_exit_before_barrier_is_legal_unless_strict(simt):
    simt.self_test.exit_before_barrier()
    simt.set_strict_barriers(True)
    try:
        with pytest.raises(simt.KernelFault, match=r"reached after 24 threads exited \(strict barriers\)"):
            simt.self_test.exit_before_barrier()
    finally:
        simt.set_strict_barriers(False)


def test_schedule_names_are_checked(simt):
    with pytest.raises(ValueError, match="schedule must be 'forward' or 'reverse', got 'sideways'"):
        simt.set_schedule("sideways")
    assert simt.get_schedule() == "forward"




def test_half_conversions_match_numpy(simt, rng):
    special = np.array([0.0, -0.0, 1.0, -2.5, 65504.0, 65519.0, 65520.0, 1e6, -1e6, 2.0**-24, 2.0**-25,
                        3 * 2.0**-26, 2.0**-14, 6.1e-5, np.inf, -np.inf, np.nan], np.float32)
    x = np.concatenate([special, rng.standard_normal(2000).astype(np.float32) * 10.0 ** rng.integers(-8, 5, 2000)])
    x = x.astype(np.float32)
    with np.errstate(over="ignore"):  # overflow to inf is part of what is checked
        want = x.astype(np.float16)
    bits = simt.self_test.to_half(x, False)
    finite = ~np.isnan(x)
    assert np.array_equal(bits[finite], want.view(np.uint16)[finite])
    assert np.isnan(want[~finite]).all() and np.isnan(bits.view(np.float16)[~finite]).all()
    back = simt.self_test.from_half(want.view(np.uint16), False)
    assert np.array_equal(back[finite], want[finite].astype(np.float32))
    bf = simt.self_test.to_half(x, True)
    assert np.array_equal(bf, bfloat16_bits(x))
    assert np.array_equal(simt.self_test.from_half(bf, True).view(np.uint32), bf.astype(np.uint32) << 16)


@pytest.mark.parametrize("bfloat16", [False, True])
def test_wmma_gemm_matches_float64(simt, rng, bfloat16):
    a = rng.standard_normal((16, 16)).astype(np.float32)
    b = rng.standard_normal((16, 16)).astype(np.float32)
    c = rng.standard_normal((16, 16)).astype(np.float32)
    if bfloat16:
        a_bits, bt_bits = bfloat16_bits(a), bfloat16_bits(b.T.copy())
        a16 = (a_bits.astype(np.uint32) << 16).view(np.float32)
        b16 = (bt_bits.astype(np.uint32) << 16).view(np.float32).T
    else:
        a_bits, bt_bits = a.astype(np.float16).view(np.uint16), b.T.astype(np.float16).view(np.uint16)
        a16, b16 = a.astype(np.float16).astype(np.float32), b.astype(np.float16).astype(np.float32)
    d = simt.self_test.wmma_gemm(a_bits, bt_bits, c, bfloat16)
    want = a16.astype(np.float64) @ b16.astype(np.float64) + c
    np.testing.assert_allclose(d, want, rtol=1e-5, atol=1e-5)


def test_wmma_fragments_do_not_have_the_hardware_layout(simt, rng):
    """A kernel that reads accumulator elements as if it knew the GPU's register
    layout writes a permutation of the right values to the wrong places."""
    a = rng.standard_normal((16, 16)).astype(np.float16)
    b = rng.standard_normal((16, 16)).astype(np.float16)
    c = np.zeros((16, 16), np.float32)
    right = simt.self_test.wmma_gemm(a.view(np.uint16), b.T.copy().view(np.uint16), c, False)
    wrong = simt.self_test.wmma_gemm(a.view(np.uint16), b.T.copy().view(np.uint16), c, False, assume_layout=True)
    assert not np.allclose(wrong, right)
    np.testing.assert_allclose(np.sort(wrong.ravel()), np.sort(right.ravel()))


def test_wmma_needs_aligned_pointers(simt):
    with pytest.raises(simt.KernelFault, match="load_matrix_sync at .*self_test.cu:\\d+: the pointer is not 256-bit"):
        simt.self_test.wmma_misaligned()
