"""Disbursement of a program to many members from a CSV file: validate everything, then apply.

File format (UTF-8, an optional byte-order mark, comma-separated, one header row)::

    member_id,amount
    M0001,2500000
    M0002,2500000

``amount`` is a whole number of rials (no sign, no separators, no decimals), 1 to
``AMOUNT_MAX``. Each member appears at most once and must exist.

Validation collects every error with its place (``file:line:column: message``) and applies
nothing when there is one. A valid file is applied in one database transaction (all rows or
none) as the batch ``batch_id``; running the same batch id with the same file again changes
nothing, and with another file is an error.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, TextIO

from ledger.store import DisbursementBatch, DisbursementRecord, Store

HEADER = ("member_id", "amount")
AMOUNT_MAX = 10_000_000_000_000  # 10^13 IRR per row; sums stay far inside a BIGINT
ROWS_MAX = 1_000_000
FILE_SIZE_MAX = 64 * 1024 * 1024
MEMBER_ID_LENGTH_MAX = 20
BATCH_ID_LENGTH_MAX = 40
BATCH_ID_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


@dataclass(frozen=True)
class CsvProblem:
    """One thing wrong with the input, and where."""

    path: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.message}"


class DisbursementError(ValueError):
    """The file (or the arguments) cannot be applied; nothing was applied."""

    def __init__(self, problems: list[CsvProblem]) -> None:
        self.problems = problems
        lines = "\n".join(str(p) for p in problems)
        super().__init__(f"{len(problems)} error(s), nothing applied:\n{lines}")


@dataclass(frozen=True)
class DisbursementReport:
    """What a disbursement run did."""

    record: DisbursementRecord
    applied: bool  # False: the batch had been applied before and nothing changed


def check_batch_id(batch_id: str) -> None:
    """Raise ValueError unless the batch id is 1-40 of ``A-Z a-z 0-9 . _ -``."""
    if not 1 <= len(batch_id) <= BATCH_ID_LENGTH_MAX or not set(batch_id) <= BATCH_ID_CHARACTERS:
        raise ValueError(
            f"--batch-id {batch_id!r}: 1-{BATCH_ID_LENGTH_MAX} characters of A-Z a-z 0-9 . _ -"
        )


def parse_rows(
    data: bytes, path: str, known_members: Callable[[set[str]], set[str]]
) -> tuple[list[tuple[str, int]], list[CsvProblem]]:
    """Parse and check a disbursement file; return its rows and every problem found.

    ``known_members`` is given the member ids of the file and returns those that exist.

    >>> rows, problems = parse_rows(b"member_id,amount\\nM1,5\\nM2,x\\n", "f.csv", lambda s: s)
    >>> rows, [str(p) for p in problems]
    ([('M1', 5)], ["f.csv:3:4: amount 'x' is not a whole number of rials"])
    """
    problems: list[CsvProblem] = []
    if len(data) > FILE_SIZE_MAX:
        return [], [CsvProblem(path, 1, 1, f"file is larger than {FILE_SIZE_MAX:,} bytes")]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        return [], [CsvProblem(path, line, column, f"not UTF-8: {error.reason}")]
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return [], [CsvProblem(path, 1, 1, "empty file: expected the header member_id,amount")]
        if tuple(h.strip().lower() for h in header) != HEADER:
            problems.append(
                CsvProblem(path, 1, 1, f"header must be member_id,amount, got {header}")
            )
        rows, lines = _read_rows(reader, path, problems)
    except csv.Error as error:
        problems.append(CsvProblem(path, reader.line_num, 1, f"CSV syntax: {error}"))
        return [], problems
    if not rows and not problems:
        problems.append(CsvProblem(path, 2, 1, "no rows: the file has a header only"))
    known = known_members({member for member, _amount in rows})
    for (member, _amount), line in zip(rows, lines, strict=True):
        if member not in known:
            problems.append(CsvProblem(path, line, 1, f"unknown member {member!r}"))
    problems.sort(key=lambda p: (p.line, p.column))
    return rows, problems


class _LineReader(Protocol):
    line_num: int

    def __iter__(self) -> Iterator[list[str]]: ...
    def __next__(self) -> list[str]: ...


def _read_rows(
    reader: _LineReader, path: str, problems: list[CsvProblem]
) -> tuple[list[tuple[str, int]], list[int]]:
    rows: list[tuple[str, int]] = []
    lines: list[int] = []
    first_line: dict[str, int] = {}
    for fields in reader:
        line = reader.line_num
        if not fields or fields == [""]:
            continue  # a blank line (e.g. the last newline) is not a row
        if len(rows) + 1 > ROWS_MAX:
            problems.append(CsvProblem(path, line, 1, f"more than {ROWS_MAX:,} rows"))
            break
        if len(fields) != 2:
            problems.append(CsvProblem(path, line, 1, f"expected 2 columns, got {len(fields)}"))
            continue
        member, amount_text = fields[0].strip(), fields[1].strip()
        amount_column = len(fields[0]) + 2
        ok = True
        if not member or len(member) > MEMBER_ID_LENGTH_MAX:
            problems.append(
                CsvProblem(path, line, 1, f"member id must be 1-{MEMBER_ID_LENGTH_MAX} characters")
            )
            ok = False
        elif member in first_line:
            problems.append(
                CsvProblem(
                    path,
                    line,
                    1,
                    f"member {member} appears again (first on line {first_line[member]})",
                )
            )
            ok = False
        amount = _amount(amount_text)
        if amount is None:
            problems.append(
                CsvProblem(
                    path,
                    line,
                    amount_column,
                    f"amount {amount_text!r} is not a whole number of rials",
                )
            )
            ok = False
        elif not 1 <= amount <= AMOUNT_MAX:
            problems.append(
                CsvProblem(path, line, amount_column, f"amount {amount:,} is not 1-{AMOUNT_MAX:,}")
            )
            ok = False
        if member and member not in first_line:
            first_line[member] = line
        if ok and amount is not None:
            rows.append((member, amount))
            lines.append(line)
    return rows, lines


def _amount(text: str) -> int | None:
    if not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def disburse_file(
    store: Store,
    path: str,
    *,
    program_code: str,
    batch_id: str,
    business_date: str,
    now: str,
    purse_code: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DisbursementReport:
    """Validate ``path`` completely, then apply it as batch ``batch_id`` (all or nothing).

    Raises DisbursementError listing every problem when the file is not valid, ValueError for
    bad arguments, and ``ledger.store.LedgerError`` when the batch id was used for another file.
    ``progress`` is called with (rows written, rows in the file) while the batch is applied.
    """
    check_batch_id(batch_id)
    with open(path, "rb") as handle:
        data = handle.read(FILE_SIZE_MAX + 1)
    digest = hashlib.sha256(data).hexdigest()
    known = store.disbursement_batch(batch_id)
    if known is not None and known.file_sha256 == digest and known.program_code == program_code:
        return DisbursementReport(known, applied=False)  # rerun: no need to validate again
    if program_code not in store.program_accounts():
        raise ValueError(f"--program {program_code!r}: no such program")
    purse = purse_code or store.program_purse_code(program_code)
    if purse is None:
        raise ValueError(f"--program {program_code}: funds no purse yet; name one with --purse")
    rows, problems = parse_rows(data, path, store.member_ids)
    if problems:
        raise DisbursementError(problems)
    batch = DisbursementBatch(batch_id, program_code, purse, digest, rows)
    report = None if progress is None else _progress_of(progress, len(rows))
    record, applied = store.apply_disbursement(
        batch, business_date=business_date, now=now, progress=report
    )
    return DisbursementReport(record, applied)


def _progress_of(progress: Callable[[int, int], None], total: int) -> Callable[[int], None]:
    return lambda done: progress(done, total)


class ProgressBar:
    """A plain-text progress bar on a stream: ``\\r``-redrawn on a terminal, else a line per 10 %.

    >>> import io
    >>> out = io.StringIO()
    >>> bar = ProgressBar(out, "applying")
    >>> bar(100, 200); bar(200, 200)
    >>> out.getvalue().splitlines()[-1]
    'applying [##############################] 100%  200/200'
    """

    WIDTH = 30
    STEP_PERCENT_PLAIN = 10

    def __init__(self, stream: TextIO, label: str) -> None:
        self.stream = stream
        self.label = label
        self.tty = stream.isatty()
        self._shown = -1

    def __call__(self, done: int, total: int) -> None:
        """Show ``done`` of ``total``."""
        assert 0 <= done <= total
        assert total > 0
        percent = done * 100 // total
        step = 1 if self.tty else self.STEP_PERCENT_PLAIN
        if percent // step == self._shown // step and done != total:
            return
        if percent == self._shown:
            return
        self._shown = percent
        filled = done * self.WIDTH // total
        bar = "#" * filled + " " * (self.WIDTH - filled)
        text = f"{self.label} [{bar}] {percent:3d}%  {done:,}/{total:,}"
        end = "" if self.tty and done != total else "\n"
        self.stream.write(("\r" if self.tty else "") + text + end)
        self.stream.flush()
