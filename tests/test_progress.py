"""Progress lines for long work other than training steps: what is done, its rate and ETA,
printed at most every few seconds and never for short work."""

from selfsup import progress


def test_progress_lines_count_what_is_done_and_stay_silent_for_short_work(capsys, monkeypatch):
    clock = iter([0.0, 4.0, 12.0, 16.0])  # Start, then the time at each advance.
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    features = progress.Progress("features of x", 300, every_s=10)
    for _ in range(3):
        features.advance(100)
    # 4 s: not yet due; 12 s: due (200 done at 16.7/s, 100 left: 6 s); 16 s: the end.
    assert capsys.readouterr().out.splitlines() == [
        "  features of x: 200/300 images  16.7 images/s  ETA 0m06s",
        "  features of x: 300/300 images  18.8 images/s  ETA 0m00s",
    ]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: 1.0)
    quick = progress.Progress("quick", 2, every_s=10)
    quick.advance(2)
    assert capsys.readouterr().out == ""
