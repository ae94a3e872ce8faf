"""What reaches the terminal: detcompress's lines, training progress thinned to a few lines,
validation results and real warnings; mmengine's config and environment dumps and known
harmless upstream warnings go to the log file only."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from detcompress import console


@pytest.fixture(autouse=True)
def default_verbosity() -> Iterator[None]:
    console.configure(console.DEFAULT)
    yield
    console.configure(console.DEFAULT)


def _shown(messages: list[str], level: int = logging.INFO) -> list[str]:
    terminal = console.MMEngineTerminalFilter()
    records = [logging.LogRecord("mmengine", level, "", 0, m, None, None) for m in messages]
    return [record.getMessage() for record in records if terminal.filter(record)]


def _train_line(done: int, total: int) -> str:
    return f"Iter(train) [{done:>4}/{total}]  lr: 1.0e-04  eta: 0:01:00  loss: 1.0"


def test_training_progress_is_thinned_to_a_few_lines_ending_with_the_last() -> None:
    lines = [_train_line(i, 900) for i in range(4, 901, 4)]  # LoggerHook interval 4: 225 lines
    shown = _shown(lines)
    assert console.PROGRESS_LINES - 1 <= len(shown) <= console.PROGRESS_LINES + 1
    assert shown[-1] == lines[-1] and shown[0] == lines[0]
    short = [_train_line(i, 8) for i in range(1, 9)]  # fewer lines than the cap: all shown
    assert _shown(short) == short


def test_dumps_and_per_batch_validation_stay_in_the_log_file() -> None:
    kept = ["Iter(val) [13/13]    coco/bbox_mAP: 0.5010  data_time: 0.0215  time: 0.1458",
            "[detcompress] compression statistics:"]  # fmt: skip
    dropped = ["Config:\nauto_scale_lr = dict(base_batch_size=8, enable=False)",
               "\n----\nSystem environment:\n    sys.platform: linux",
               "paramwise_options -- backbone.stem.bn.weight:weight_decay=0.0",
               "Hooks will be executed in the following order:",
               "Iter(val) [ 4/13]    eta: 0:00:01  time: 0.1928  data_time: 0.0396",
               "Saving checkpoint at 20 iterations"]  # fmt: skip
    assert _shown(kept + dropped) == kept


def test_real_warnings_pass_known_harmless_ones_do_not() -> None:
    real = ["The testing results of the whole dataset is empty.",
            "backbone.stem.conv.weight is skipped since its requires_grad=False"]  # fmt: skip
    harmless = [
        '"FileClient" will be deprecated in future. Please use io functions',
        "Since `metrics` is an empty dict, the behavior to save the best checkpoint will be",
        "__nncf_hooks.pre_hooks.backbone/stem/conv/conv2d/0__1.0._num_bits is skipped since its "
        "requires_grad=False",
        "__nncf_hooks.post_hooks.neck/activate/mul/0__0.0 is duplicate. It is skipped since "
        "bypass_duplicate=True",
    ]
    assert _shown(real + harmless, logging.WARNING) == real


def test_quiet_shows_warnings_only_and_verbose_changes_nothing() -> None:
    console.configure(console.QUIET)
    assert _shown([_train_line(900, 900), "[detcompress] plan"]) == []
    assert _shown(["a real warning"], logging.WARNING) == ["a real warning"]
    from mmengine.logging import MMLogger

    console.configure(console.VERBOSE)
    before = MMLogger.__init__
    with console.mmengine_output():
        assert MMLogger.__init__ is before  # nothing filtered, nothing patched


def test_detcompress_lines_go_to_the_current_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    console.log.info("schedule: 8 iterations")
    console.log.warning("verifying on random images")
    assert capsys.readouterr().out.splitlines() == [
        "[detcompress] schedule: 8 iterations",
        "[detcompress] warning: verifying on random images",
    ]
    console.configure(console.QUIET)
    console.log.info("not shown")
    assert capsys.readouterr().out == ""
