"""Progress reporting: a few lines per long step when stderr is not a terminal, none with --quiet."""

from __future__ import annotations

import pytest

from mmfusion import progress


@pytest.fixture(autouse=True)
def loud():
    progress.set_quiet(False)
    yield
    progress.set_quiet(False)


def test_plain_lines_without_a_terminal(capsys):
    assert list(progress.progress(range(95), "embedding texts", unit="batches")) == list(range(95))
    lines = capsys.readouterr().err.splitlines()
    assert 9 <= len(lines) <= progress.LINES_WITHOUT_TTY + 1
    assert lines[0].startswith("embedding texts: 9/95 batches") and lines[-1].startswith("embedding texts: 95/95 batches")


def test_unknown_total_reports_every_item(capsys):
    assert list(progress.progress(iter("abc"), "trials")) == ["a", "b", "c"]
    assert [line.split(" (")[0] for line in capsys.readouterr().err.splitlines()] == ["trials: 1 it", "trials: 2 it", "trials: 3 it"]


def test_quiet_prints_nothing_and_still_yields(capsys):
    progress.set_quiet(True)
    assert sum(progress.progress(range(10), "scoring")) == 45
    assert capsys.readouterr().err == ""


def test_cli_quiet_flag_silences_predict(capsys, tmp_path):
    from mmfusion.cli import main, parser

    assert parser().parse_args(["--quiet", "fusions"]).quiet is True
    assert main(["--quiet", "fusions"]) == 0 and progress.is_quiet()
    assert main(["fusions"]) == 0 and not progress.is_quiet()  # each invocation sets it afresh
