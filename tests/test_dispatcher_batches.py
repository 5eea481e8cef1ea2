"""How a chunk sizes its batches: one frame until a call is timed, then about BATCH_SECONDS' worth."""

from dispatcher.batches import BATCH_SECONDS, FrameBatches


def test_batches_are_sized_by_the_time_calls_take():
    batches = FrameBatches(list(range(100)), max_batch=16)
    assert batches.take() == [0]  # nothing timed yet
    batches.timed(1, BATCH_SECONDS / 4)
    assert batches.take() == [1, 2, 3, 4]
    batches.timed(4, BATCH_SECONDS / 2)  # slower now (1/8 per frame): the average of the two, 3/16
    assert len(batches.take()) == int(BATCH_SECONDS / (BATCH_SECONDS * 3 / 16))
    for _ in range(3):  # much faster calls: the estimate halves its way down to them
        batches.timed(10, BATCH_SECONDS / 1000)
    assert len(batches.take()) == 16  # never over the function's max_batch
    batches.timed(1, BATCH_SECONDS * 10)
    batches.timed(1, BATCH_SECONDS * 10)
    assert len(batches.take()) == 1  # a slow model: one frame per call


def test_one_frame_per_call_without_max_batch_and_nothing_after_stop():
    batches = FrameBatches([5, 6, 7], max_batch=1)
    batches.timed(1, 0.001)
    assert [batches.take(), batches.take()] == [[5], [6]]
    batches.stop()
    assert batches.take() == []
    drained = FrameBatches([1, 2], max_batch=16)
    drained.timed(1, 0.001)
    assert drained.take() == [1, 2] and drained.take() == []
