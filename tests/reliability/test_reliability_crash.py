"""Crash consistency, short version of ``python -m scripts.crash_test``: a real ``honar serve``
under load from several connections is SIGKILLed 4 times and restarted; afterwards every approval
a terminal received is in the ledger, nothing is posted twice, debits equal credits, the journal
verifies and every decision has its outbox event. The 20-kill runs (SQLite and PostgreSQL) are
in docs/reliability.md."""

from __future__ import annotations

from pathlib import Path

from scripts.crash_test import CrashOptions, run


def test_sigkill_under_load_loses_nothing_sqlite(tmp_path: Path) -> None:
    options = CrashOptions(
        kills=4, seed=11, connections=4, settle_s=1.0, data_dir=str(tmp_path), time_max_s=90.0
    )
    report = run(options)
    print(report.table())
    assert report.kills == 4 and report.restarts == 4
    assert report.approvals_received > 0 and report.retransmissions > 0
    assert report.losses == []
    assert report.approvals_found == report.approvals_received
    assert report.ok, report.table()
