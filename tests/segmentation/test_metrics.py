"""SegmentationEvaluator against hand computations, and over two gloo processes."""

from __future__ import annotations

import os
from fractions import Fraction
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from internimage.errors import ConfigError, DataError
from internimage.segmentation.metrics import SegmentationEvaluator
from internimage.train.launch import free_port

IGNORE = 255


def reference_metrics(
    prediction: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE
) -> dict[str, Any]:
    """mmseg's metrics by counting pixel by pixel, class by class (no confusion matrix)."""
    pairs = [
        (int(t), int(p))
        for t, p in zip(target.flatten().tolist(), prediction.flatten().tolist(), strict=True)
        if t != ignore_index
    ]
    iou: list[float | None] = []
    acc: list[float | None] = []
    for c in range(num_classes):
        tp = sum(1 for t, p in pairs if t == c and p == c)
        fn = sum(1 for t, p in pairs if t == c and p != c)
        fp = sum(1 for t, p in pairs if t != c and p == c)
        iou.append(None if tp + fp + fn == 0 else 100 * tp / (tp + fp + fn))
        acc.append(None if tp + fn == 0 else 100 * tp / (tp + fn))
    correct = sum(1 for t, p in pairs if t == p)
    defined_iou = [v for v in iou if v is not None]
    defined_acc = [v for v in acc if v is not None]
    return {
        "mIoU": sum(defined_iou) / len(defined_iou),
        "mAcc": sum(defined_acc) / len(defined_acc),
        "aAcc": 100 * correct / len(pairs),
        "IoU": iou,
        "Acc": acc,
        "pixels": len(pairs),
    }


def assert_matches(result: dict[str, Any], expected: dict[str, Any]) -> None:
    """Same metrics up to float rounding, and None exactly where expected."""
    for key in ("mIoU", "mAcc", "aAcc"):
        assert result[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-12), key
    for key in ("IoU", "Acc"):
        assert len(result[key]) == len(expected[key])
        for got, want in zip(result[key], expected[key], strict=True):
            if want is None:
                assert got is None, key
            else:
                assert got == pytest.approx(want, rel=1e-12, abs=1e-12), key
    assert result["pixels"] == expected["pixels"]


def random_set(
    n: int, num_classes: int, seed: int, absent: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random [n, 7, 9] predictions and targets, ~20% ignored pixels, mostly right predictions.

    ``absent`` is a class that appears in neither (its IoU and Acc are undefined).
    """
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, (n, 7, 9), generator=g)
    noise = torch.randint(0, num_classes, (n, 7, 9), generator=g)
    # Right on about half the pixels, so that IoUs are neither all 0 nor all 100.
    prediction = torch.where(torch.rand(n, 7, 9, generator=g) < 0.5, target, noise)
    if absent is not None:
        target[target == absent] = (absent + 1) % num_classes
        prediction[prediction == absent] = (absent + 2) % num_classes
    target[torch.rand(n, 7, 9, generator=g) < 0.2] = IGNORE
    return prediction, target


# Hand-worked example, 2 x 3 pixels, 4 classes (class 3 absent), one ignored pixel:
#   target      prediction
#   0   1  1    0  1  2
#   2 255  0    2  0  0
# Counted pairs (target, prediction): (0,0) (1,1) (1,2) (2,2) (0,0).
#   class 0: TP 2, FP 0, FN 0 -> IoU 2/2, Acc 2/2
#   class 1: TP 1, FP 0, FN 1 -> IoU 1/2, Acc 1/2
#   class 2: TP 1, FP 1, FN 0 -> IoU 1/2, Acc 1/1
#   class 3: nowhere          -> None, None
# mIoU = (1 + 1/2 + 1/2) / 3 = 2/3, mAcc = (1 + 1/2 + 1) / 3 = 5/6, aAcc = 4/5.
HAND_TARGET = torch.tensor([[[0, 1, 1], [2, IGNORE, 0]]])
HAND_PREDICTION = torch.tensor([[[0, 1, 2], [2, 0, 0]]])


def test_hand_worked_example() -> None:
    evaluator = SegmentationEvaluator(4, class_names=["sky", "road", "car", "tree"])
    evaluator.update(HAND_PREDICTION, HAND_TARGET)
    result = evaluator.compute()
    assert result["mIoU"] == pytest.approx(float(100 * Fraction(2, 3)), rel=1e-14)
    assert result["mAcc"] == pytest.approx(float(100 * Fraction(5, 6)), rel=1e-14)
    assert result["aAcc"] == pytest.approx(float(100 * Fraction(4, 5)), rel=1e-14)
    assert result["IoU"] == pytest.approx([100.0, 50.0, 50.0, None])
    assert result["Acc"] == pytest.approx([100.0, 50.0, 100.0, None])
    assert result["IoU"][3] is None and result["Acc"][3] is None
    assert result["pixels"] == 5
    assert result["classes"] == ["sky", "road", "car", "tree"]
    assert set(result) == {"mIoU", "mAcc", "aAcc", "IoU", "Acc", "pixels", "classes"}
    assert evaluator.confusion.tolist() == [
        [2, 0, 0, 0],
        [0, 1, 1, 0],
        [0, 0, 1, 0],
        [0, 0, 0, 0],
    ]
    assert evaluator.confusion.dtype == torch.int64


def test_matches_loop_reference_on_random_sets() -> None:
    for seed, (num_classes, absent) in enumerate([(5, 3), (7, None), (2, None), (1, None)]):
        prediction, target = random_set(3, num_classes, seed, absent)
        evaluator = SegmentationEvaluator(num_classes)
        evaluator.update(prediction, target)
        result = evaluator.compute()
        assert_matches(result, reference_metrics(prediction, target, num_classes))
        if absent is not None:
            assert result["IoU"][absent] is None and result["Acc"][absent] is None


def test_small_integer_dtypes_and_negative_ignore_index() -> None:
    prediction, target = random_set(2, 6, seed=11)
    expected = reference_metrics(prediction, target, 6)
    evaluator = SegmentationEvaluator(6)
    evaluator.update(prediction.to(torch.uint8), target.to(torch.uint8))
    assert_matches(evaluator.compute(), expected)
    # ignore_index -1 with int16 labels: the same pixels ignored under another value.
    evaluator = SegmentationEvaluator(6, ignore_index=-1)
    target_neg = torch.where(target == IGNORE, -1, target).to(torch.int16)
    evaluator.update(prediction.to(torch.int32), target_neg)
    assert_matches(evaluator.compute(), expected)


def test_ignored_pixels_are_not_counted() -> None:
    prediction, target = random_set(2, 4, seed=5)
    evaluator = SegmentationEvaluator(4)
    evaluator.update(prediction, target)
    before = evaluator.compute()
    # Whatever is predicted at ignored pixels (even values that are no class) changes nothing.
    changed = torch.where(target == IGNORE, (prediction + 1) % 4, prediction)
    changed[(target == IGNORE) & (torch.arange(changed.numel()).view_as(changed) % 2 == 0)] = 99
    other = SegmentationEvaluator(4)
    other.update(changed, target)
    assert other.compute() == before
    assert before["pixels"] == int((target != IGNORE).sum())
    assert other.confusion.sum() == before["pixels"]


def test_class_only_predicted_has_zero_iou_and_no_acc() -> None:
    # Class 2 is predicted once but never in the target: IoU 0 (counted), Acc undefined.
    evaluator = SegmentationEvaluator(3)
    evaluator.update(torch.tensor([[[0, 1, 2]]]), torch.tensor([[[0, 1, 1]]]))
    result = evaluator.compute()
    assert result["IoU"] == pytest.approx([100.0, 50.0, 0.0])
    assert result["Acc"] == pytest.approx([100.0, 50.0, None])
    assert result["mIoU"] == pytest.approx(50.0)
    assert result["mAcc"] == pytest.approx(75.0)


def test_accumulation_equals_one_update_on_the_concatenation() -> None:
    prediction, target = random_set(5, 6, seed=2, absent=0)
    whole = SegmentationEvaluator(6)
    whole.update(prediction, target)
    parts = SegmentationEvaluator(6)
    for lo, hi in [(0, 1), (1, 3), (3, 3), (3, 5)]:  # (3, 3): an empty batch
        parts.update(prediction[lo:hi], target[lo:hi])
    assert torch.equal(parts.confusion, whole.confusion)
    assert parts.compute() == whole.compute()
    assert_matches(whole.compute(), reference_metrics(prediction, target, 6))


def test_reset_forgets_everything() -> None:
    evaluator = SegmentationEvaluator(4)
    evaluator.update(HAND_PREDICTION, HAND_TARGET)
    evaluator.reset()
    assert evaluator.confusion.sum() == 0
    prediction, target = random_set(2, 4, seed=9)
    evaluator.update(prediction, target)
    assert_matches(evaluator.compute(), reference_metrics(prediction, target, 4))


def test_compute_twice_is_stable_and_leaves_the_state() -> None:
    prediction, target = random_set(2, 5, seed=3)
    evaluator = SegmentationEvaluator(5)
    evaluator.update(prediction, target)
    matrix = evaluator.confusion
    first = evaluator.compute()
    assert evaluator.compute() == first
    assert torch.equal(evaluator.confusion, matrix)
    # The confusion property is a copy: writing to it does not change the evaluator.
    evaluator.confusion.zero_()
    assert evaluator.compute() == first


def test_main_metric_is_miou() -> None:
    evaluator = SegmentationEvaluator(2)
    assert evaluator.main_metric == "mIoU"
    evaluator.update(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 0]]]))
    assert evaluator.main_metric in evaluator.compute()
    assert evaluator.compute()["classes"] == ["class 0", "class 1"]


def test_bad_target_value_raises_data_error_naming_it() -> None:
    evaluator = SegmentationEvaluator(4)
    with pytest.raises(DataError, match=r"\b150\b"):
        evaluator.update(torch.zeros(1, 2, 2, dtype=torch.long),
                         torch.tensor([[[0, 150], [IGNORE, 1]]]))
    with pytest.raises(DataError, match=r"-3"):
        evaluator.update(torch.zeros(1, 1, 2, dtype=torch.long), torch.tensor([[[-3, 1]]]))
    # A failed update counts nothing.
    assert evaluator.confusion.sum() == 0


def test_bad_prediction_value_raises_value_error() -> None:
    evaluator = SegmentationEvaluator(4)
    with pytest.raises(ValueError, match=r"\b4\b"):
        evaluator.update(torch.tensor([[[0, 4]]]), torch.tensor([[[0, 1]]]))
    with pytest.raises(ValueError, match="integer"):
        evaluator.update(torch.zeros(1, 1, 2), torch.zeros(1, 1, 2, dtype=torch.long))


def test_shape_mismatch_names_both_shapes() -> None:
    evaluator = SegmentationEvaluator(4)
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(2, 4, 3\)"):
        evaluator.update(torch.zeros(2, 3, 4, dtype=torch.long),
                         torch.zeros(2, 4, 3, dtype=torch.long))


def test_empty_evaluation_raises_data_error() -> None:
    evaluator = SegmentationEvaluator(3)
    with pytest.raises(DataError, match="no labelled pixel to evaluate"):
        evaluator.compute()
    evaluator.update(torch.zeros(1, 2, 2, dtype=torch.long),
                     torch.full((1, 2, 2), IGNORE, dtype=torch.long))
    with pytest.raises(DataError, match="no labelled pixel to evaluate"):
        evaluator.compute()


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((0,), {}),
        ((-2,), {}),
        ((2.0,), {}),
        ((True,), {}),
        ((3,), {"class_names": ["a", "b"]}),
        ((2,), {"class_names": "ab"}),
        ((2,), {"ignore_index": 1}),
    ],
)
def test_bad_arguments_raise_config_error(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        SegmentationEvaluator(*args, **kwargs)


def _distributed_worker(
    rank: int, port: int, prediction: torch.Tensor, target: torch.Tensor, queue: mp.Queue
) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        evaluator = SegmentationEvaluator(6)
        half = prediction.shape[0] // 2
        mine = slice(rank * half, (rank + 1) * half)
        # Two updates per process: accumulation and reduction together.
        for p, t in zip(prediction[mine].split(2), target[mine].split(2), strict=True):
            evaluator.update(p, t)
        local = evaluator.confusion
        first = evaluator.compute()
        second = evaluator.compute()
        # As nested lists: tensors would travel as shared memory that dies with this process.
        queue.put((rank, first, second, torch.equal(evaluator.confusion, local),
                   local.tolist()))
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_process_on_the_whole_set() -> None:
    prediction, target = random_set(8, 6, seed=4, absent=5)
    # Different labels on the two halves, so that each process alone would differ from the whole.
    target[4:][target[4:] == 1] = IGNORE
    whole = SegmentationEvaluator(6)
    whole.update(prediction, target)
    expected = whole.compute()

    context = mp.get_context("spawn")
    queue = context.Queue()
    port = free_port()
    procs = [
        context.Process(target=_distributed_worker, args=(r, port, prediction, target, queue))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    try:
        results = {}
        for _ in procs:
            rank, first, second, unchanged, local = queue.get(timeout=120)
            results[rank] = (first, second, unchanged, local)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    for rank in (0, 1):
        first, second, unchanged, _ = results[rank]
        assert first == expected
        assert second == expected
        assert unchanged
    # Each process kept only its own counts, which together make the whole set's.
    local_sum = torch.tensor(results[0][3]) + torch.tensor(results[1][3])
    assert torch.equal(local_sum, whole.confusion)
    assert not torch.equal(torch.tensor(results[0][3]), whole.confusion)
    assert_matches(expected, reference_metrics(prediction, target, 6))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_inputs_keep_the_matrix_on_the_device() -> None:
    prediction, target = random_set(4, 6, seed=7, absent=2)
    evaluator = SegmentationEvaluator(6)
    evaluator.update(prediction.cuda(), target.cuda().to(torch.uint8))
    assert evaluator.confusion.device.type == "cuda"
    cpu = SegmentationEvaluator(6)
    cpu.update(prediction, target)
    assert evaluator.compute() == cpu.compute()
    assert_matches(evaluator.compute(), reference_metrics(prediction, target, 6))
