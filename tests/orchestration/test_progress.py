"""This node's preparation state and when it goes to the peers (pure: explicit time)."""

from __future__ import annotations

import itertools
import math

import pytest

from exoquic.orchestration.progress import PROGRESS_INTERVAL, Preparation, ProgressGate
from exoquic.wire.messages import MAX_REASON_LENGTH, ModelProgress, decode_message, encode_message

MIB = 1 << 20


def test_nothing_to_report_before_the_first_load() -> None:
    assert Preparation("m").current(0.0) is None


def test_a_download_reports_bytes_files_and_rate_then_loading_and_ready() -> None:
    prep = Preparation("org/model")
    download = prep.start(now=10.0)
    download("a.safetensors", 0, 8 * MIB)  # sizes are announced before any byte
    download("b.safetensors", 0, 2 * MIB)
    download("config.json", 100, 100)
    state = prep.current(10.0)
    assert state == ModelProgress("org/model", "downloading", 100, 10 * MIB + 100, 1, 3, 0, "")
    download("a.safetensors", 4 * MIB, 8 * MIB)
    state = prep.current(12.0)  # 4 MiB (and config.json) in 2 s
    assert state is not None
    assert (state.done_bytes, state.files_done) == (4 * MIB + 100, 1)
    assert state.bytes_per_second == (4 * MIB + 100) // 2
    download("a.safetensors", 8 * MIB, 8 * MIB)
    download("b.safetensors", 2 * MIB, 2 * MIB)
    state = prep.current(12.5)
    assert state is not None
    # every file on disk: the loader is reading them now
    assert (state.phase, state.files_done, state.bytes_per_second) == ("loading", 3, 0)
    prep.loading()
    assert prep.current(13.0) == ModelProgress(
        "org/model", "loading", 10 * MIB + 100, 10 * MIB + 100, 3, 3, 0, ""
    )
    prep.ready()
    state = prep.current(14.0)
    assert state is not None and state.phase == "ready"


def test_the_rate_is_measured_over_a_window_not_per_sample() -> None:
    prep = Preparation("m")
    download = prep.start(now=0.0)
    download("f", 0, 100 * MIB)
    download("f", MIB, 100 * MIB)
    state = prep.current(0.2)
    assert state is not None and state.bytes_per_second == 0  # too soon to tell
    download("f", 3 * MIB, 100 * MIB)
    state = prep.current(1.5)
    assert state is not None and state.bytes_per_second == 2 * MIB
    download("f", 4 * MIB, 100 * MIB)
    state = prep.current(2.0)
    assert state is not None and state.bytes_per_second == 2 * MIB  # kept until the next window
    state = prep.current(2.5)
    assert state is not None and state.bytes_per_second == MIB


def test_a_local_model_is_loading_without_bytes() -> None:
    prep = Preparation("smollm2-135m-instruct")
    prep.start(now=0.0)  # a bundled GGUF reports no download at all
    assert prep.current(0.0) == ModelProgress("smollm2-135m-instruct", "loading", 0, 0, 0, 0, 0, "")


def test_a_failure_carries_its_error_and_a_new_load_clears_it() -> None:
    prep = Preparation("m")
    download = prep.start(now=0.0)
    download("f", 5, 10)
    prep.fail("cannot reach the hub: " + "x" * 2000)
    state = prep.current(1.0)
    assert state is not None and state.phase == "failed"
    assert state.error.startswith("cannot reach") and len(state.error) == MAX_REASON_LENGTH
    assert (state.done_bytes, state.total_bytes) == (5, 10)
    decode_message(encode_message(state))  # clipped to what the wire allows
    prep.start(now=2.0)
    state = prep.current(2.0)
    assert state is not None and (state.phase, state.error, state.total_bytes) == ("loading", "", 0)


def test_a_file_longer_than_announced_never_reports_more_than_the_total() -> None:
    prep = Preparation("m")
    prep.start(now=0.0)("f", 12, 10)
    state = prep.current(0.0)
    assert state is not None and state.done_bytes == state.total_bytes == 10


def test_a_long_model_id_is_clipped_to_the_wire_limit() -> None:
    prep = Preparation("x" * 300)
    prep.start(now=0.0)
    state = prep.current(0.0)
    assert state is not None and len(state.model) == 256


def progress(done: int, phase: str = "downloading") -> ModelProgress:
    return ModelProgress("m", phase, done, 100, 0, 1, 0, "")


def test_gate_sends_changes_at_most_once_per_interval_and_only_the_latest() -> None:
    gate = ProgressGate(0.5)
    assert gate.poll(None, 0.0) is None
    assert gate.poll(progress(1), 0.0) == progress(1)
    assert gate.poll(progress(1), 1.0) is None  # unchanged: nothing to say
    assert gate.poll(progress(2), 1.1) == progress(2)
    assert gate.poll(progress(3), 1.2) is None  # too soon
    assert gate.poll(progress(4), 1.4) is None
    assert gate.next_poll(progress(4), 1.4) == pytest.approx(1.6)
    assert gate.poll(progress(4), 1.6) == progress(4)  # 3 was skipped


def test_gate_bounds_the_rate_of_a_busy_download() -> None:
    gate = ProgressGate(PROGRESS_INTERVAL)
    sent = []
    now = 0.0
    for step in range(1000):  # a change every 10 ms for 10 s, polled as often
        now = step * 0.01
        if (message := gate.poll(progress(step % 100), now)) is not None:
            sent.append((now, message))
    times = [t for t, _ in sent]
    assert len(sent) == 20
    assert all(b - a >= PROGRESS_INTERVAL - 1e-9 for a, b in itertools.pairwise(times))


def test_gate_wakes_the_sender_only_when_there_is_something_to_watch() -> None:
    gate = ProgressGate(0.5)
    assert gate.next_poll(None, 0.0) == math.inf
    gate.poll(progress(1), 0.0)
    # a download runs: its bytes arrive without notice, so sample every interval
    assert gate.next_poll(progress(1), 0.1) == pytest.approx(0.6)
    # a change held back goes out as soon as the interval allows
    assert gate.next_poll(progress(2), 0.1) == pytest.approx(0.5)
    assert gate.next_poll(progress(2), 0.7) == pytest.approx(0.7)
    # settled: only a change (an event) wakes the sender
    ready = progress(100, "ready")
    gate.poll(ready, 1.0)
    assert gate.next_poll(ready, 1.0) == math.inf
    failed = ModelProgress("m", "failed", 0, 0, 0, 0, 0, "boom")
    gate.poll(failed, 2.0)
    assert gate.next_poll(failed, 2.0) == math.inf
