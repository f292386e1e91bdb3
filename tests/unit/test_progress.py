"""The library's progress reporters (dreamedit3d_core.progress): what a user sees on the console, and interruption."""

from __future__ import annotations

import pytest

from dreamedit3d_core.errors import Interrupted
from dreamedit3d_core.progress import CallbackProgress, ConsoleProgress, NullProgress, Progress, as_progress


def test_console_progress_resumes_where_a_run_stopped_and_shows_the_loss(capsys):
    bar = ConsoleProgress("toy phase")
    assert isinstance(bar, Progress)
    bar.update(4, 6, loss=0.123456)  # a run resumed after 3 finished steps reports step 4 first
    bar.update(6, 6, loss=0.5)
    bar.check_interrupt()  # the console never stops a run
    bar.close()
    bar.close()  # closing twice is harmless
    err = capsys.readouterr().err
    assert "toy phase" in err and "6/6" in err and "loss=0.5" in err
    assert "0/6" not in err.replace("6/6", "")  # it started at the resumed step, not at zero


def test_callback_progress_passes_updates_and_stops_on_request():
    seen, stop = [], []
    hook = CallbackProgress(on_update=lambda step, total, preview, info: seen.append((step, total, info)),
                            should_stop=lambda: bool(stop))
    hook.update(1, 2, loss=3.0)
    hook.check_interrupt()
    stop.append(True)
    with pytest.raises(Interrupted):
        hook.check_interrupt()
    assert seen == [(1, 2, {"loss": 3.0})]
    assert isinstance(as_progress(None), NullProgress) and as_progress(hook) is hook
