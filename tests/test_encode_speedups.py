"""Batched slice encoding, encoding ahead while prompting, and the dtype policy: same results.

SAM2 hiera tiny, random weights, 128 px, real CT slices (../shared/data). Batched encoding and
encoding ahead change only when slices are encoded, so results must equal the plain run's (batched
convolutions may round differently: logits within 1e-4). bfloat16 autocast must stay within the
stated tolerance of float32 on the same frames.
"""

from __future__ import annotations

import numpy as np
import pytest

from sam2_helpers import engine_config
from server_helpers import wait_for

pytest.importorskip("sam2")


@pytest.fixture(scope="module")
def ct10(totalseg):
    from sam2volume import Volume, read_volume

    ct = read_volume(totalseg / "example_ct_sm.nii.gz")
    return Volume(np.ascontiguousarray(ct.array[:, :, 20:30]), ct.spacing, ct.origin, ct.direction, ct.meta)


@pytest.fixture(scope="module")
def predictor():
    from sam2volume.engine.predictor import build_predictor

    return build_predictor(engine_config(dtype="float32"))


BOX = [[45, 27, 5], [104, 85, 5]]


def _run(vol, predictor, **cfg):
    from sam2volume.session import Session

    s = Session(vol, "axial", engine_config(**cfg), predictor=predictor)
    s.add_box(1, BOX)
    return s


def _logits(s, n):
    return np.stack([s.frame_logits(1, k) for k in range(n)])


def test_batched_encoding_equals_single_slices(ct10, predictor):
    n = ct10.shape[2]
    single = _run(ct10, predictor, dtype="float32", encode_batch=1)
    f0 = predictor.encoder_forwards
    single.propagate(stop_after=None)
    forwards_single = predictor.encoder_forwards - f0
    batched = _run(ct10, predictor, dtype="float32", encode_batch=4)
    f0 = predictor.encoder_forwards
    batched.propagate(stop_after=None)
    forwards_batched = predictor.encoder_forwards - f0
    assert forwards_single == n - 1  # the prompted slice was encoded by the prompt
    assert forwards_batched == 3  # slices 6-9 in one pass of four, then 4-1 and 0 backwards
    np.testing.assert_allclose(_logits(batched, n), _logits(single, n), atol=1e-4)
    np.testing.assert_array_equal(batched.result().array, single.result().array)


def test_batch_never_exceeds_the_feature_cache_budget(ct10, predictor):
    # a budget of about two slices: batches shrink to what fits, results stay the same
    one = _run(ct10, predictor, dtype="float32")
    per_slice = one.feature_cache.slice_bytes
    small = _run(ct10, predictor, dtype="float32", encode_batch=8, feature_cache_mb=2.5 * per_slice / 2**20)
    assert small.feature_cache.slices_that_fit() == 2
    small.propagate(stop_after=None)
    assert small.feature_cache.nbytes <= small.feature_cache.budget
    one.propagate(stop_after=None)
    np.testing.assert_array_equal(small.result().array, one.result().array)


def test_encoding_ahead_warms_up_propagation_with_equal_results(ct10, predictor):
    plain = _run(ct10, predictor, dtype="float32")
    plain.propagate(stop_after=None)
    ahead = _run(ct10, predictor, dtype="float32", encode_ahead=6)
    assert ahead.wait_for_background(60)
    assert ahead.slices_encoded_ahead == 6
    assert sorted(ahead.feature_cache.entries) == [2, 3, 4, 5, 6, 7, 8]  # nearest the prompt, both sides
    c0 = predictor.encoder_calls
    ahead.propagate(stop_after=None)
    assert predictor.encoder_calls - c0 == 3  # only the slices not encoded ahead
    np.testing.assert_array_equal(ahead.result().array, plain.result().array)


def test_encoding_ahead_never_evicts_and_stops_on_propagate(ct10, predictor):
    one = _run(ct10, predictor, dtype="float32")
    per_slice = one.feature_cache.slice_bytes
    s = _run(ct10, predictor, dtype="float32", encode_ahead=50, feature_cache_mb=3.5 * per_slice / 2**20)
    assert s.wait_for_background(60)
    assert len(s.feature_cache.entries) == 3 and 5 in s.feature_cache.entries  # the prompted slice kept
    s.propagate(stop_after=None)  # stops any background work first; runs as usual
    assert s.wait_for_background(5)


def test_encoding_ahead_waits_while_another_user_holds_the_device(ct10, predictor):
    # the server's device lock (FairLock): background work takes it only when nobody holds or wants it
    import threading
    import time

    from sam2volume.server.pool import FairLock
    from sam2volume.session import Session

    lock = FairLock()
    s = Session(ct10, "axial", engine_config(dtype="float32", encode_ahead=4), predictor=predictor, model_lock=lock)
    seen = []

    def other_user():  # queues for the device behind the holder, then holds it for a while
        with lock:
            seen.append(s.slices_encoded_ahead)
            time.sleep(0.3)
            seen.append(s.slices_encoded_ahead)

    with lock:  # another user's call runs on the device
        s.add_box(1, BOX)  # this session's own prompt is a foreground call: answered at once
        time.sleep(0.3)
        assert s.slices_encoded_ahead == 0  # the background waits
        waiter = threading.Thread(target=other_user)
        waiter.start()
        assert wait_for(lambda: lock._queue, 5, 0.001)  # the other user waits in the lock's queue
    waiter.join(10)
    assert seen == [0, 0]  # the queued user went first, although the background asked earlier
    assert s.wait_for_background(60) and s.slices_encoded_ahead == 4


def test_fair_lock_acquire_if_idle():
    import threading

    from sam2volume.server.pool import FairLock

    lock = FairLock()
    assert lock.acquire_if_idle()
    assert not lock.acquire_if_idle()  # held
    got = threading.Event()
    t = threading.Thread(target=lambda: (lock.acquire(), got.set(), lock.release()))
    t.start()
    assert wait_for(lambda: lock._queue, 5, 0.001)  # the thread waits in the lock's queue
    assert not lock.acquire_if_idle()  # held, and a waiter queued
    lock.release()
    t.join(5)
    assert got.is_set() and lock.acquire_if_idle()
    lock.release()


def test_nearest_slices_order():
    from sam2volume.session import nearest_slices

    assert nearest_slices(5, 4, 10) == [6, 4, 7, 3]
    assert nearest_slices(0, 3, 10) == [1, 2, 3]
    assert nearest_slices(9, 20, 10) == [8, 7, 6, 5, 4, 3, 2, 1, 0]


def test_bfloat16_within_tolerance_of_float32(ct10, predictor):
    """The dtype policy's bf16 (CPUs with AVX512-BF16/AMX, Ampere+ GPUs) against float32, same frames
    and weights. Stated tolerance: Dice of the 3D result >= 0.90 and every slice's mask agreeing on
    >= 95 % of its pixels (random weights make masks ragged, so this is a loose floor)."""
    n = ct10.shape[2]
    f32 = _run(ct10, predictor, dtype="float32")
    f32.propagate(stop_after=None)
    bf16 = _run(ct10, predictor, dtype="bfloat16")
    bf16.propagate(stop_after=None)
    a, b = f32.result().array > 0, bf16.result().array > 0
    assert a.any()
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.90
    for k in range(n):
        assert (f32.frame_mask(1, k) == bf16.frame_mask(1, k)).mean() >= 0.95


def test_dtype_policy():
    import torch

    from sam2volume.engine.predictor import cpu_has_native_bf16, resolve_dtype

    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    assert resolve_dtype("float32", cpu) == torch.float32
    assert resolve_dtype("auto", torch.device("mps")) == torch.float32


@pytest.mark.parametrize("field,value", [("encode_batch", -1), ("encode_ahead", 1.5), ("encode_batch", True), ("compile", "yes")])
def test_bad_speed_settings_named(field, value):
    from sam2volume.engine.config import EngineConfig
    from sam2volume.errors import InputError

    with pytest.raises(InputError, match=field):
        EngineConfig(**{field: value})
