"""Progress of long steps: a line at least every 10 s off a terminal, a bar on one."""

from __future__ import annotations

import io
import itertools
import os
import re
import subprocess
import sys
import textwrap
import threading
import time

import anndata as ad
import dask
import dask.array as da
import numpy as np
import pytest

import scdask
from scdask import _progress
from scdask._compute import compute
from scdask._progress import advance, expect, step

LINE = re.compile(
    r"^\[scdask\] (?P<name>.+?): (?P<verb>done in |stopped after )?[\d.]+ s(?(verb)| so far)"
    r"(, (?P<done>\d+)(/(?P<total>\d+))? blocks)?$"
)


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def _progress_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "scdask-progress"]


def test_advance_and_expect_without_a_step_do_nothing():
    assert _progress._current is None
    expect(10)
    advance(3)
    assert _progress._current is None
    out = io.StringIO()
    with step("s", interval=0.02, stream=out):
        time.sleep(0.1)
    # nothing announced before the step leaked into it
    assert "blocks" not in out.getvalue()


def test_lines_with_counts_off_a_terminal():
    out = io.StringIO()
    with step("write x", interval=0.05, stream=out):
        expect(6)
        for _ in range(6):
            time.sleep(0.05)
            advance()
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3 and "\r" not in out.getvalue()
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    assert all(m["name"] == "write x" and m["total"] == "6" for m in matches)
    done = [int(m["done"]) for m in matches if m["done"]]
    assert done == sorted(done) and done[-1] == 6
    assert matches[-1]["verb"] == "done in " and all(not m["verb"] for m in matches[:-1])
    assert not _progress_threads()


def test_a_short_step_prints_only_its_closing_line():
    out = io.StringIO()
    with step("quick", interval=5, stream=out):
        expect(2)
        advance(2)
    assert re.fullmatch(r"\[scdask\] quick: done in [\d.]+ s, 2/2 blocks\n", out.getvalue())


def test_interval_from_config_and_stream_looked_up_at_call_time(capsys):
    with dask.config.set({"scdask.progress-interval": "30ms"}):
        with step("configured"):
            time.sleep(0.15)
    err = capsys.readouterr().err
    assert err.count("[scdask] configured: ") >= 3
    assert err.splitlines()[-1].startswith("[scdask] configured: done in ")


def test_bad_interval_is_refused():
    with pytest.raises(scdask.InputError, match="interval"), step("x", interval=0):
        pass


def test_a_failed_step_says_so_and_stops():
    out = io.StringIO()
    with pytest.raises(RuntimeError), step("doomed", interval=0.02, stream=out):
        time.sleep(0.08)
        raise RuntimeError("boom")
    assert out.getvalue().splitlines()[-1].startswith("[scdask] doomed: stopped after ")
    assert _progress._current is None and not _progress_threads()
    size = len(out.getvalue())
    time.sleep(0.1)
    assert len(out.getvalue()) == size  # nothing after the step ended


def test_a_step_inside_a_step_adds_to_the_outer_one():
    out = io.StringIO()
    with step("outer", interval=0.02, stream=out):
        expect(2)
        with step("inner", interval=0.02, stream=out):
            expect(3)
            advance(5)
        time.sleep(0.06)
    assert "inner" not in out.getvalue()
    assert out.getvalue().splitlines()[-1].endswith(", 5/5 blocks")


def test_a_bar_redrawn_in_place_on_a_terminal():
    out = FakeTTY()
    with step("bar", stream=out):
        expect(4)
        for _ in range(4):
            time.sleep(0.15)
            advance()
    text = out.getvalue()
    assert text.count("\r") >= 2  # redrawn, a few times a second
    assert text.endswith("\n") and text.count("\n") == 1  # one line, ended at exit
    last = text.rsplit("\r", 1)[-1]
    assert last.startswith("[scdask] bar [" + "#" * _progress._BAR_WIDTH + "] 4/4 blocks, ")
    assert re.search(r"\[#*\.+\] [0-3]/4 blocks", text)  # partial bars came first


def test_writer_and_compute_report_their_blocks(tmp_path):
    def slow(block):
        time.sleep(0.03)
        return block

    x = da.ones((40, 3), chunks=(10, 3)).map_blocks(slow, meta=np.empty((0, 0)))
    out = io.StringIO()
    with step("write", interval=0.02, stream=out):
        scdask.write_h5ad(ad.AnnData(x), tmp_path / "x.h5ad")
    assert out.getvalue().splitlines()[-1].endswith(", 4/4 blocks")

    out = io.StringIO()
    with step("compute", interval=0.02, stream=out):
        (y,) = compute(x)
    assert y.shape == (40, 3)
    assert out.getvalue().splitlines()[-1].endswith(", 4/4 blocks")


# -- a step of 30+ s, off a terminal ---------------------------------------------------------

_SLOW_STEP = textwrap.dedent(
    """
    import sys, threading, time
    import anndata as ad, dask, dask.array as da, numpy as np
    import scdask
    from scdask._progress import step

    def slow(block):
        time.sleep(3.9)
        return block

    dask.config.set(scheduler="threads", num_workers=1)  # one block at a time: 8 x 3.9 s
    x = da.ones((80, 5), chunks=(10, 5)).map_blocks(slow, meta=np.empty((0, 0)))
    print("@start", flush=True, file=sys.stderr)
    with step("write slow.h5ad"):
        scdask.write_h5ad(ad.AnnData(x), sys.argv[1])
    alive = [t for t in threading.enumerate() if t.name == "scdask-progress"]
    print(f"@end {len(alive)}", flush=True, file=sys.stderr)
    time.sleep(0.5)  # a stray reporter would show here
    """
)


@pytest.mark.slow
def test_a_30s_step_prints_at_least_every_10s_off_a_terminal(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_SCDASK__PROGRESS")}
    proc = subprocess.Popen(
        [sys.executable, "-u", "-c", _SLOW_STEP, str(tmp_path / "slow.h5ad")],
        stderr=subprocess.PIPE,  # a pipe: not a terminal
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    seen: list[tuple[float, str]] = []

    def read() -> None:
        for line in proc.stderr:
            seen.append((time.monotonic(), line.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert proc.wait(timeout=120) == 0, seen
    finally:
        proc.kill()
    reader.join(timeout=10)

    marks = {line.split()[0]: (t, line) for t, line in seen if line.startswith("@")}
    t_start, _ = marks["@start"]
    t_end, end_line = marks["@end"]
    assert end_line == "@end 0", "the reporting thread outlived its step"
    during = [(t, line) for t, line in seen if t_start <= t <= t_end and line.startswith("[")]
    after = [line for t, line in seen if t > t_end]
    assert after == [], f"printed after the step ended: {after}"
    assert t_end - t_start >= 30, f"the step took only {t_end - t_start:.1f} s"

    matches = [LINE.match(line) for _, line in during]
    assert all(matches), during
    assert matches[-1]["verb"] == "done in " and matches[-1]["done"] == "8"
    assert all(not m["verb"] for m in matches[:-1])
    counts = [int(m["done"] or 0) for m in matches]
    assert counts == sorted(counts) and len(set(counts)) == len(counts), counts
    assert all(m["total"] == "8" for m in matches if m["done"])

    times = [t_start] + [t for t, _ in during] + [t_end]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    print(f"step {t_end - t_start:.1f} s; gaps between lines: {[round(g, 2) for g in gaps]}")
    assert gaps[0] <= 10, f"first line after {gaps[0]:.1f} s"
    assert max(gaps) <= 10, gaps
