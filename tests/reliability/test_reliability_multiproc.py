"""Two ``honar serve`` processes on one PostgreSQL ledger race purchases on card M0002
(``python -m scripts.multiproc_test`` is the long version): no overdraft, no double posting,
0500 reconciliation per terminal agrees, debits equal credits, the journal verifies."""

from __future__ import annotations

import pytest

from scripts.multiproc_test import M0002_FUNDS, MultiOptions, run

from conftest import fresh_postgres_database


@pytest.mark.postgres
def test_two_processes_racing_on_one_card_never_overdraw() -> None:
    with fresh_postgres_database() as url:
        report = run(MultiOptions(ledger_url=url, processes=2, purchases=90, amount=70_000))
    print(report.table())
    assert report.m0002_approved > 0 and all(n > 0 for n in report.approved_per_process)
    assert report.charged_on_wire <= M0002_FUNDS
    assert report.charged_on_wire == report.charged_in_ledger == report.spent_per_balance_inquiry
    assert report.m0002_declined_51 > 0  # the race did reach the end of the funds
    assert report.duplicate_keys == 0 and report.approvals_missing == 0
    assert report.reconciliation == {"HNR00004": "00", "HNR00002": "00"}
    assert report.balanced and report.journal_ok
    assert report.ok, report.table()
