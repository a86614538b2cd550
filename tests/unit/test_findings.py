"""domain/findings: kinds in their declared order, lines per finding, unknown kinds refused."""

from __future__ import annotations

from typing import Literal, get_args

import pytest

from csi_py.core.rebuild import RebuildReport
from csi_py.core.reconcile import ReconcileReport
from csi_py.domain.findings import Findings

Kind = Literal["adopted", "skipped", "errors"]


class Report(Findings[Kind]):
    KINDS = get_args(Kind)


def test_counts_name_every_kind_in_declared_order_and_lines_every_finding():
    report = Report()
    assert report.counts() == {"adopted": 0, "skipped": 0, "errors": 0}
    assert report.lines() == []
    report.add("errors", "e1")
    report.extend("adopted", ["a1", "a2"])
    report.extend("skipped", iter([]))
    assert report.counts() == {"adopted": 2, "skipped": 0, "errors": 1}
    assert report.lines() == ["adopted: a1", "adopted: a2", "errors: e1"]
    assert report["adopted"] == ["a1", "a2"]
    assert repr(report) == "Report({'adopted': ['a1', 'a2'], 'errors': ['e1']})"


def test_an_unknown_kind_is_refused_and_changes_nothing():
    report = Report()
    with pytest.raises(KeyError):
        report.add("adopte", "x")  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        report["nothing"]  # type: ignore[index]
    assert report.lines() == []


def test_a_kinds_list_is_a_copy():
    report = Report()
    report.add("adopted", "a1")
    report["adopted"].append("not recorded")
    assert report["adopted"] == ["a1"]


def test_each_report_is_its_own():
    first, second = ReconcileReport(), ReconcileReport()
    first.add("left_alone", "/dev/loop7")
    first.rebuild.add("adopted_volumes", "v1")
    assert second.lines() == [] and second.rebuild.lines() == []


def test_the_reconcile_summary_counts_its_kinds_then_the_rebuilds():
    report = ReconcileReport()
    report.add("finished_creates", "v1")
    report.rebuild.add("adopted_stagings", "v2 on /dev/loop3 (mount at /t)")
    kinds = [part.split("=")[0] for part in report.summary().removeprefix("reconciled: ").split()]
    assert kinds == list(ReconcileReport.KINDS) + list(RebuildReport.KINDS)
    assert "finished_creates=1" in report.summary() and "adopted_stagings=1" in report.summary()
    assert "rebuild=RebuildReport({'adopted_stagings':" in repr(report)
