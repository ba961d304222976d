"""The benchmark suite runs end to end (tiny shapes, ssl_core rows only)."""

import json

import numpy as np

from benchmarks import bench_gelu, bench_layer_norm, common


def test_suites_produce_rows_and_json(tmp_path, capsys):
    copy_bps = common.copy_bandwidth(1 << 20, repeats=3)
    assert copy_bps > 0
    results = bench_layer_norm.run(None, copy_bps, repeats=2, shapes=[(64, 48)])
    results += bench_gelu.run(None, copy_bps, repeats=2, shapes=[(32, 96)])
    ops = {r.op for r in results}
    assert {"layer_norm fwd", "layer_norm fwd+bwd", "gelu[none] fwd+bwd", "gelu[tanh] fwd"} <= ops
    assert all(r.ms > 0 and r.bytes_moved > 0 and r.impl == "ssl_core" for r in results)

    common.print_table(results)
    assert "layer_norm fwd+bwd" in capsys.readouterr().out
    path = tmp_path / "bench.json"
    common.write_json(path, common.machine_description(2, copy_bps / 1e9), results)
    saved = json.loads(path.read_text())
    assert len(saved["results"]) == len(results)
    assert np.isclose(saved["results"][0]["gbps"], results[0].gbps, rtol=1e-3)


def test_compare_sets_speedup():
    rows = [common.Result("op", "1", "a", "x", 2.0, 8, 1.0), common.Result("op", "1", "b", "y", 6.0, 8, 1.0)]
    common.compare(rows, "op", "a/x", "b/y")
    assert rows[0].speedup == 3.0 and rows[0].compare_to == "b/y"
