"""Throughput measurements of ``internimage.bench``: what they time, compare and skip."""

from __future__ import annotations

import pytest
import torch

from internimage.bench import (
    Measurement,
    benchmark_model,
    benchmark_operator,
    bfloat16_is_native,
    format_table,
    matmul_gflops,
)
from internimage.errors import ConfigError
from internimage.models import count_macs, create_model


def _tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("internimage_atto", depths=(1, 1, 1, 1), num_classes=10)


def test_model_rates_shares_and_errors() -> None:
    model = _tiny()
    results = benchmark_model(
        model, backends=["numba", "reference"], batches=[2], image_size=32, repeats=2,
        peak_gflops=100.0,
    )
    assert [(m.path, m.dtype, m.backend, m.batch) for m in results] == [
        ("eager", "float32", "numba", 2), ("eager", "float32", "reference", 2)
    ]
    gflop = 2 * count_macs(model, (1, 3, 32, 32)) / 1e9
    for m in results:
        assert m.skipped is None and len(m.seconds) == 2 and all(t > 0 for t in m.seconds)
        assert m.gflop_per_call == pytest.approx(2 * gflop)
        assert m.images_per_s == pytest.approx(2 / min(m.seconds))
        assert m.peak_share == pytest.approx(m.gflops / 100.0)
    # The float32 eager output of the default backend is the comparison's own reference.
    assert results[0].error_vs_float32 == 0.0
    assert 0 < results[1].error_vs_float32 < 1e-5
    row = results[1].as_dict()
    assert row["images_per_s"] == results[1].images_per_s and row["backend"] == "reference"


def test_unrunnable_configurations_are_skipped_with_a_reason() -> None:
    results = benchmark_model(
        _tiny(), paths=["onnxruntime"], dtypes=["bfloat16"], backends=["triton"], batches=[1],
        image_size=32, repeats=1, peak_gflops=1.0,
    )
    assert len(results) == 1 and results[0].backend == "-"
    assert results[0].skipped == "onnxruntime runs the float32 graph"
    assert results[0].seconds == () and results[0].images_per_s is None
    operator = benchmark_operator(backends=["triton"], size=8, batch=1, repeats=1,
                                  channels=8, group=2)
    assert operator[0].skipped is not None and "triton" in operator[0].skipped


@pytest.mark.skipif(not bfloat16_is_native(), reason="this CPU has no native bfloat16")
def test_bfloat16_is_compared_with_float32() -> None:
    results = benchmark_model(_tiny(), dtypes=["float32", "bfloat16"], batches=[1],
                              image_size=32, repeats=1, peak_gflops=1.0)
    bf16 = next(m for m in results if m.dtype == "bfloat16")
    # bfloat16 keeps 8 bits of mantissa: errors of a few 1e-3 of the output's range, not zero.
    assert 1e-5 < bf16.error_vs_float32 < 0.1


def test_operator_backends_agree() -> None:
    results = benchmark_operator(channels=8, group=2, size=9, batch=2, repeats=1,
                                 backends=["numba", "reference"])
    assert [m.backend for m in results] == ["numba", "reference"]
    assert results[0].target == "dcnv3 C=8 G=2" and results[0].image_size == 9
    assert results[1].error_vs_float32 < 1e-5 and results[0].gflops is None


def test_the_dcnv4_operator_is_timed_on_the_same_values() -> None:
    dcnv3, dcnv4 = (
        benchmark_operator(channels=8, group=2, size=9, batch=2, repeats=1,
                           backends=["reference"], operator=operator)[0]
        for operator in ("dcnv3", "dcnv4")
    )
    assert (dcnv3.target, dcnv4.target) == ("dcnv3 C=8 G=2", "dcnv4 C=8 G=2")
    assert dcnv4.seconds and dcnv4.error_vs_float32 < 1e-5
    with pytest.raises(ConfigError, match="operator must be one of"):
        benchmark_operator(operator="dcnv5")


def test_bad_choices_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="unknown path jit"):
        benchmark_model(_tiny(), paths=["jit"], image_size=32)
    with pytest.raises(ConfigError, match="unknown dtype float16"):
        benchmark_operator(dtypes=["float16"])
    with pytest.raises(ConfigError, match="divisible"):
        benchmark_operator(channels=10, group=4)
    with pytest.raises(ConfigError, match="batch sizes"):
        benchmark_model(_tiny(), batches=[0], image_size=32)


def test_table_shows_rates_and_skip_reasons() -> None:
    timed = Measurement("m", "eager", "float32", "numba", 8, 224, seconds=(0.5, 0.4),
                        gflop_per_call=80.0, peak_gflops=400.0, error_vs_float32=0.0)
    skipped = Measurement("m", "onnxruntime", "bfloat16", "-", 8, 224,
                          skipped="onnxruntime runs the float32 graph")
    lines = format_table([timed, skipped]).splitlines()
    assert lines[0].split()[:5] == ["target", "path", "dtype", "backend", "batch"]
    assert lines[2].split()[5:9] == ["20.00", "400.0", "200.0", "50.0%"]
    assert lines[3].endswith("skipped: onnxruntime runs the float32 graph")
    assert lines[4] == "fp32 peak: a 2048^3 float32 matmul measured at 400.0 GFLOP/s"


def test_matmul_rate_is_positive() -> None:
    assert matmul_gflops(size=64, repeats=2) > 0


@pytest.mark.slow
def test_onnxruntime_path_runs_the_exported_graph() -> None:
    pytest.importorskip("onnxruntime")
    results = benchmark_model(_tiny(), paths=["eager", "onnxruntime"], batches=[2],
                              image_size=32, repeats=1, peak_gflops=1.0)
    ort = results[1]
    assert ort.path == "onnxruntime" and ort.backend == "-" and ort.skipped is None
    # The exported graph samples with GridSample: the reference operator's numbers.
    assert ort.error_vs_float32 < 1e-5 and ort.images_per_s > 0
    operator = benchmark_operator(paths=["onnxruntime"], channels=8, group=2, size=8, batch=1)
    assert operator[0].skipped == "onnxruntime runs exported models, not the operator alone"
