"""The shared terminal display helpers."""

from __future__ import annotations

from nntrtool.cli.display import Progress, progress_factory


def test_progress_factory_makes_progress_with_the_callers_quiet(capsys):
    with progress_factory(quiet=True)(10, "work") as bar:
        bar.advance(10, "t")
    assert isinstance(bar, Progress)
    assert (bar.total, bar.description, bar.quiet, bar.done) == (10, "work", True, 10)
    assert capsys.readouterr().err == ""
    assert progress_factory()(5, "x").quiet is False
