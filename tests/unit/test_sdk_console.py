"""Console capture in the SDK (client/runstream/_internal/console.py): the terminal still sees every
byte, lines are cut and rate-capped with visible markers, the original streams come back at
finish, and console="off" / RUNSTREAM_CONSOLE=off capture nothing. The ConsoleCapture tests
drive the class with an in-memory stream and a list as the run's hand-off; the end-to-end ones
send through the stand-in ingest server (tests/unit/sdk_fake_ingest.py, labelled stand-in) — the
real server is in tests/integration/test_console.py."""

from __future__ import annotations

import io
import logging
import os
import sys
import threading

import pytest

import runstream
from runstream._internal.console import STDERR, STDOUT, ConsoleCapture
from runstream.errors import ConfigError
from runstream.v1 import types_pb2
from tests.sdk_options import quick_sdk_options


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def terminal(monkeypatch) -> tuple[io.StringIO, io.StringIO]:
    """sys.stdout / sys.stderr replaced by in-memory streams: what the 'terminal' received. Called
    in the test body: pytest's own capture sets sys.stdout again when the test's call begins."""
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    return out, err


def capture(emit=None, **limits) -> tuple[ConsoleCapture, list, Clock]:
    """An installed capture handing its batches to a list (or to `emit`)."""
    batches: list = []
    clock = Clock()
    options = dict(
        max_line_chars=8192, max_bytes_per_s=1 << 20, max_total_bytes=1 << 30, flush_interval_s=60.0
    )
    options.update(limits)
    cap = ConsoleCapture(emit or batches.append, project="p", run_id="r", rank=3, clock=clock, **options)
    cap.install()
    return cap, batches, clock


def lines_of(batches) -> list[tuple[int, int, str]]:
    """(stream, line number, text) of every captured line, in order."""
    out = []
    for b in batches:
        assert (b.project, b.run_id, b.rank) == ("p", "r", 3)
        assert len(b.streams) == len(b.line_numbers) == len(b.times_ms) == len(b.texts)
        out.extend(zip(b.streams, b.line_numbers, b.texts, strict=True))
    return out


def test_the_terminal_sees_everything_and_lines_are_numbered_across_both_streams(monkeypatch):
    out, err = terminal(monkeypatch)
    cap, batches, _ = capture()
    print("epoch 1")
    sys.stdout.write("partial ")
    sys.stdout.write("line\nsecond\n")
    print("warning: lr high", file=sys.stderr)
    sys.stdout.writelines(["a\n", "b"])
    sys.stdout.flush()
    assert sys.stdout.getvalue() == out.getvalue()  # attributes reach the original stream
    cap.stop()
    assert out.getvalue() == "epoch 1\npartial line\nsecond\na\nb"
    assert err.getvalue() == "warning: lr high\n"
    assert lines_of(batches) == [
        (STDOUT, 0, "epoch 1"),
        (STDOUT, 1, "partial line"),
        (STDOUT, 2, "second"),
        (STDERR, 3, "warning: lr high"),
        (STDOUT, 4, "a"),
        (STDOUT, 5, "b"),  # the partial line is completed at stop
    ]
    assert sys.stdout is out and sys.stderr is err  # restored


def test_progress_bars_redrawn_with_carriage_returns_keep_their_last_drawing(monkeypatch):
    terminal(monkeypatch)
    cap, batches, _ = capture(max_line_chars=50)
    for pct in range(0, 101, 1):
        sys.stderr.write(f"\r{pct:3d}% |{'#' * (pct // 10):10s}|")
    assert len(cap._partial[STDERR]) <= 51  # redraws never pile up in memory
    sys.stderr.write("\n")
    print("done\r\n", end="")
    cap.stop()
    assert [t for _, _, t in lines_of(batches)] == ["100% |##########|", "done"]


def test_long_lines_are_cut_with_a_marker_and_a_huge_partial_line_stays_bounded(monkeypatch):
    out, _ = terminal(monkeypatch)
    cap, batches, _ = capture(max_line_chars=10)
    print("x" * 25)
    for _ in range(1000):
        sys.stdout.write("y" * 100)  # 100,000 characters without a newline
    assert len(cap._partial[STDOUT]) <= 11
    sys.stdout.write("\n")
    print("short")
    cap.stop()
    texts = [t for _, _, t in lines_of(batches)]
    assert texts == [
        "x" * 10 + " … [runstream: 15 more characters cut]",
        "y" * 10 + " … [runstream: 99990 more characters cut]",
        "short",
    ]
    assert cap.truncated_lines == 2
    assert out.getvalue().count("y") == 100_000  # the terminal still got every character


def test_over_the_rate_lines_are_dropped_counted_and_marked_without_blocking(monkeypatch):
    out, _ = terminal(monkeypatch)
    cap, batches, clock = capture(max_bytes_per_s=100)  # a bucket of 200 bytes; a line costs 16 + text
    for i in range(50):
        print(f"line {i:02d} ............")  # 20 characters: 36 bytes accounted
    kept_first = cap.kept_lines
    assert kept_first == 5 and cap.dropped_lines == 45
    clock.now += 1.0  # 100 bytes back
    print("after the pause")
    cap.stop()
    texts = [t for _, _, t in lines_of(batches)]
    assert texts[:5] == [f"line {i:02d} ............" for i in range(5)]
    assert texts[5] == "[runstream: 45 console lines dropped (over console_max_bytes_per_s=100)]"
    assert texts[6:] == ["after the pause"]
    assert [n for _, n, _ in lines_of(batches)] == list(range(7))
    assert lines_of(batches)[5][0] == STDERR
    assert out.getvalue().count("\n") == 51  # the terminal got every line
    assert cap.stats() == {"console_lines": 7, "console_dropped_lines": 45, "console_truncated_lines": 0}


def test_the_rate_counts_utf8_bytes_and_lone_surrogates_become_valid_text(monkeypatch):
    terminal(monkeypatch)
    cap, batches, _ = capture(max_bytes_per_s=100)  # 200 bytes; a line of 40 "é" costs 80 + 16
    print("bad \udcff byte")  # e.g. a file name decoded with surrogateescape
    for _ in range(3):
        print("é" * 40)
    cap.stop()
    texts = [t for _, _, t in lines_of(batches)]
    assert texts[:2] == ["bad ? byte", "é" * 40]  # 31 + 96 bytes spent; the next 96 do not fit
    assert cap.dropped_lines == 2
    assert texts[2] == "[runstream: 2 console lines dropped (over console_max_bytes_per_s=100)]"
    for b in batches:
        b.SerializeToString()  # valid UTF-8 throughout


def test_the_total_cap_stops_keeping_lines_and_says_so_at_stop(monkeypatch):
    terminal(monkeypatch)
    cap, batches, clock = capture(max_total_bytes=100)
    for i in range(10):
        clock.now += 10  # the rate is no limit here
        print(f"{i:04d}")  # 4 characters: 20 bytes accounted
    cap.stop()
    texts = [t for _, _, t in lines_of(batches)]
    assert texts == ["0000", "0001", "0002", "0003", "0004"] + [
        "[runstream: 5 console lines dropped (past console_max_total_bytes=100)]"
    ]


def test_the_flusher_thread_hands_batches_to_the_run_on_its_own(monkeypatch):
    terminal(monkeypatch)
    cap, batches, _ = capture(flush_interval_s=0.02)
    print("live")
    deadline = 200
    while not batches and deadline:
        import time

        time.sleep(0.01)
        deadline -= 1
    assert [t for _, _, t in lines_of(batches)] == ["live"]  # before stop: sent while running
    cap.stop()


def test_a_capture_due_before_the_flusher_wakes_is_ticked_on_time(monkeypatch):
    """The flusher thread sleeps until its earliest capture is due and is woken only by a capture
    due sooner (a run started beside others costs it no wake-up): that one must not wait a minute."""
    import time

    terminal(monkeypatch)
    slow, _, _ = capture(flush_interval_s=60.0)
    time.sleep(0.1)  # the flusher now sleeps until the slow capture's first tick, a minute away
    fast, batches, _ = capture(flush_interval_s=0.02)
    print("soon")
    deadline = time.monotonic() + 5
    while not batches and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [t for _, _, t in lines_of(batches)] == ["soon"]  # before stop: the flusher sent it
    fast.stop()
    slow.stop()


def _console_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "runstream-console"}


def test_one_flusher_thread_serves_the_captures_of_runs_started_one_after_another(monkeypatch):
    """A sweep that starts runs back to back must not start (and join) a thread per run."""
    terminal(monkeypatch)
    seen: list[set[threading.Thread]] = []
    for i in range(5):
        cap, batches, _ = capture(flush_interval_s=0.01)
        print(f"run {i}")
        seen.append(_console_threads())
        cap.stop()
        assert [t for _, _, t in lines_of(batches)] == [f"run {i}"]
    assert len(seen[0]) == 1 and all(threads == seen[0] for threads in seen)


def test_stop_waits_for_a_flush_under_way_and_nothing_is_handed_over_after_it(monkeypatch):
    """The flusher thread may be handing lines to the run when stop() begins: stop waits for it,
    so the lines reach the run in order and all of them before stop returns (the run's finish is
    queued right after)."""
    import time

    terminal(monkeypatch)
    for _ in range(20):
        batches: list = []

        def slow_emit(batch, batches=batches):
            if threading.current_thread().name == "runstream-console":
                time.sleep(0.003)  # widens the window in which stop() could overtake the flusher
            batches.append(batch)

        cap, _, _ = capture(slow_emit, flush_interval_s=0.001)
        for i in range(30):
            print(f"line {i}")
            time.sleep(0.0002)
        cap.stop()
        at_stop = len(batches)
        time.sleep(0.01)
        assert len(batches) == at_stop, "a batch was handed to the run after stop() returned"
        assert [t for _, _, t in lines_of(batches)] == [f"line {i}" for i in range(30)]


def test_a_tee_wrapped_by_someone_else_only_writes_through_after_stop(monkeypatch):
    out, _ = terminal(monkeypatch)
    cap, batches, _ = capture()
    tee = sys.stdout
    wrapper = io.TextIOWrapper(io.BytesIO())  # e.g. another tool that replaced sys.stdout meanwhile
    sys.stdout = wrapper
    cap.stop()
    assert sys.stdout is wrapper  # someone else's stream is left alone
    sys.stdout = out
    tee.write("after stop\n")
    assert out.getvalue().endswith("after stop\n")
    assert lines_of(batches) == []


def test_logging_handlers_made_before_the_capture_are_captured_and_given_back(monkeypatch):
    _, err = terminal(monkeypatch)
    logger = logging.getLogger("test_sdk_console.train")
    handler = logging.StreamHandler(sys.stderr)  # as logging.basicConfig does, before runstream.init
    logger.addHandler(handler)
    file_like = logging.FileHandler(os.devnull)  # a StreamHandler subclass: left alone
    logger.addHandler(file_like)
    try:
        cap, batches, _ = capture()
        logger.warning("loss diverged at step %d", 12)
        cap.stop()
        assert handler.stream is err and file_like.stream is not sys.stderr
        logger.warning("after stop")
    finally:
        logger.removeHandler(handler)
        logger.removeHandler(file_like)
        file_like.close()
    assert lines_of(batches) == [(STDERR, 0, "loss diverged at step 12")]
    assert err.getvalue() == "loss diverged at step 12\nafter stop\n"


def test_a_print_from_inside_the_capture_passes_through_without_deadlock(monkeypatch):
    """As a signal handler that prints while the main thread is inside the tee's write."""
    out, _ = terminal(monkeypatch)
    cap, batches, _ = capture()
    inner = cap._complete

    def interrupted(stream, line):
        if line == "outer":
            sys.stdout.write("from the handler\n")
        inner(stream, line)

    monkeypatch.setattr(cap, "_complete", interrupted)
    worker = threading.Thread(target=lambda: sys.stdout.write("outer\n"))
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "the nested write deadlocked"
    cap.stop()
    assert out.getvalue() == "outer\nfrom the handler\n"
    assert [t for _, _, t in lines_of(batches)] == ["outer"]


def _init(fake, tmp_path, **kw):
    return runstream.init(project="p", **quick_sdk_options(fake.endpoint, tmp_path, **kw))


def test_a_run_captures_by_default_sends_on_the_stream_and_restores_at_finish(fake, tmp_path, monkeypatch):
    out, err = terminal(monkeypatch)
    run = _init(fake, tmp_path, rank=2)
    assert sys.stdout is not out  # teed
    print("hello from rank 2")
    print("careful", file=sys.stderr)
    run.log({"loss": 1.0})
    assert run.finish()
    assert sys.stdout is out and sys.stderr is err
    print("after finish")  # not captured
    console = fake.bodies("console")  # stand-in ingest: what the SDK sent, acked once per seq
    lines = [(b.rank, s, t) for b in console for s, t in zip(b.streams, b.texts, strict=True)]
    assert lines == [
        (2, types_pb2.CONSOLE_STREAM_STDOUT, "hello from rank 2"),
        (2, types_pb2.CONSOLE_STREAM_STDERR, "careful"),
    ]
    assert out.getvalue() == "hello from rank 2\nafter finish\n"
    assert run.stats["console_lines"] == 2
    # the console went out before the finish
    kinds = [r.WhichOneof("body") for _, r in sorted(fake.requests.items())]
    assert kinds.index("run_finish") > max(i for i, k in enumerate(kinds) if k == "console")


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_console_off_captures_nothing(fake, tmp_path, monkeypatch, how):
    out, _ = terminal(monkeypatch)
    if how == "environment":
        monkeypatch.setenv("RUNSTREAM_CONSOLE", "off")
        run = _init(fake, tmp_path)
    else:
        run = _init(fake, tmp_path, console="off")
    assert sys.stdout is out
    print("not captured")
    run.finish()
    assert fake.bodies("console") == []
    assert "console_lines" not in run.stats
    assert out.getvalue() == "not captured\n"


def test_bad_console_settings_are_refused_at_init(fake, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="console='quiet': use one of capture, off"):
        _init(fake, tmp_path, console="quiet")
    with pytest.raises(ConfigError, match="console_max_bytes_per_s=0 must be >= 1"):
        _init(fake, tmp_path, console_max_bytes_per_s=0)


def test_a_second_run_in_the_process_leaves_the_first_runs_capture_alone(fake, tmp_path, monkeypatch):
    terminal(monkeypatch)
    first = _init(fake, tmp_path)
    second = runstream.init(project="p", id="second", **quick_sdk_options(fake.endpoint, tmp_path))
    print("to the first run")
    second.finish()
    first.finish()
    console = fake.bodies("console")
    assert {b.run_id for b in console} == {first.id}


def test_a_forked_child_writes_through_and_captures_nothing(fake, tmp_path, monkeypatch):
    terminal(monkeypatch)
    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    run = _init(fake, tmp_path)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the tee must still write through, and keep nothing
        try:
            sys.stdout.write("child line\n")
            ok = sys.stdout._capture is None  # detached by the fork hook
            os.write(
                write_end, b"1" if ok and sys.stdout._original.getvalue().endswith("child line\n") else b"0"
            )
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read_end, 1) == b"1"
    print("parent line")
    run.finish()
    texts = [t for b in fake.bodies("console") for t in b.texts]
    assert texts == ["parent line"]
