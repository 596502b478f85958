"""The daily report for people: per program, per merchant and per province/city.

Two renderings of the same :class:`ledger.settlement.DayFigures`: a terminal table
(:func:`render_table`) and a self-contained HTML page with inline SVG bar charts
(:func:`render_html`): no script, no stylesheet or font from the network, so it opens offline
and prints as it shows. Amounts are IRR minor units with thousands separators. No floats:
bar lengths are integer arithmetic.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

from ledger.settlement import DayFigures, jalali

# City -> province (ostan). A city not listed is shown as its own province.
PROVINCES = {
    "Tehran": "Tehran",
    "Karaj": "Alborz",
    "Isfahan": "Isfahan",
    "Kashan": "Isfahan",
    "Shiraz": "Fars",
    "Mashhad": "Razavi Khorasan",
    "Tabriz": "East Azerbaijan",
    "Yazd": "Yazd",
    "Kerman": "Kerman",
    "Rasht": "Gilan",
    "Ahvaz": "Khuzestan",
    "Qom": "Qom",
    "Hamadan": "Hamadan",
    "Kermanshah": "Kermanshah",
    "Urmia": "West Azerbaijan",
    "Sari": "Mazandaran",
    "Zahedan": "Sistan and Baluchestan",
    "Bandar Abbas": "Hormozgan",
}

CHART_WIDTH = 720
BAR_HEIGHT = 14
LABEL_WIDTH = 220
COLORS = ("#2f6f9f", "#d0813a", "#4c9a5b", "#a34d6d")


@dataclass(frozen=True)
class PlaceFigures:
    """Merchants' figures added up per province and city."""

    province: str
    city: str
    merchants: int
    count: int
    gross_amount: int
    net_payable: int


def places(figures: DayFigures) -> list[PlaceFigures]:
    """Per (province, city), sorted by province then city."""
    totals: dict[tuple[str, str], list[int]] = {}
    for m in figures.merchants:
        key = (PROVINCES.get(m.city, m.city), m.city)
        row = totals.setdefault(key, [0, 0, 0, 0])
        row[0] += 1
        row[1] += m.count
        row[2] += m.gross_amount
        row[3] += m.net_payable
    return [PlaceFigures(p, c, *values) for (p, c), values in sorted(totals.items())]


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[f"{v:,}" if isinstance(v, int) else str(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [bool(rows) and isinstance(rows[0][i], int) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True)
        ).rstrip()

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)


PROGRAM_HEADERS = (
    "program",
    "disbursed",
    "spent",
    "returned",
    "discounts funded",
    "expired",
    "outstanding",
)
MERCHANT_HEADERS = (
    "merchant",
    "name",
    "city",
    "count",
    "gross",
    "refunds",
    "reversals",
    "merchant discount",
    "program discount",
    "net payable",
)
PLACE_HEADERS = ("province", "city", "merchants", "count", "gross", "net payable")


def _program_rows(figures: DayFigures) -> list[tuple[object, ...]]:
    return [
        (
            p.program,
            p.disbursed,
            p.spent_by_members,
            p.returned_to_members,
            p.discounts_funded,
            p.expired_back,
            p.outstanding,
        )
        for p in figures.programs
    ]


def _merchant_rows(figures: DayFigures) -> list[tuple[object, ...]]:
    return [
        (
            m.merchant_id,
            m.name,
            m.city,
            m.count,
            m.gross_amount,
            m.refunds,
            m.reversals,
            m.merchant_funded_discount,
            m.program_funded_discount,
            m.net_payable,
        )
        for m in figures.merchants
    ]


def _place_rows(figures: DayFigures) -> list[tuple[object, ...]]:
    return [
        (p.province, p.city, p.merchants, p.count, p.gross_amount, p.net_payable)
        for p in places(figures)
    ]


def render_table(figures: DayFigures) -> str:
    """The day's figures as plain-text tables (amounts in IRR)."""
    day = figures.business_date
    parts = [
        f"Honar Card — business date {day} ({jalali(day)}), amounts in IRR",
        "",
        "Programs",
        _table(PROGRAM_HEADERS, _program_rows(figures)),
        "",
        "Merchants",
        _table(MERCHANT_HEADERS, _merchant_rows(figures)) if figures.merchants else "(none)",
        "",
        "Provinces and cities",
        _table(PLACE_HEADERS, _place_rows(figures)) if figures.merchants else "(none)",
    ]
    return "\n".join(parts)


def bar_chart(
    title: str, labels: Sequence[str], series: Sequence[tuple[str, Sequence[int]]]
) -> str:
    """A horizontal grouped bar chart as inline SVG; one group per label, one bar per series.

    Lengths are proportional to the absolute value (a negative value is drawn hatched-light
    and its label carries the sign).
    """
    peak = max([abs(v) for _, values in series for v in values] + [1])
    span = CHART_WIDTH - LABEL_WIDTH - 130
    group = BAR_HEIGHT * len(series) + 10
    legend_h = 22
    height = legend_h + group * len(labels) + 10
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{CHART_WIDTH}" '
        f'height="{height}" viewBox="0 0 {CHART_WIDTH} {height}">',
        f"<title>{html.escape(title)}</title>",
    ]
    x = LABEL_WIDTH
    for index, (name, _values) in enumerate(series):
        color = COLORS[index % len(COLORS)]
        out.append(f'<rect x="{x}" y="4" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{x + 16}" y="14" class="legend">{html.escape(name)}</text>')
        x += 24 + 8 * len(name)
    for row, label in enumerate(labels):
        top = legend_h + row * group
        out.append(
            f'<text x="{LABEL_WIDTH - 8}" y="{top + group // 2}" text-anchor="end" '
            f'class="label">{html.escape(label)}</text>'
        )
        for index, (_name, values) in enumerate(series):
            value = values[row]
            width = abs(value) * span // peak
            y = top + index * BAR_HEIGHT
            color = COLORS[index % len(COLORS)]
            opacity = "0.45" if value < 0 else "1"
            out.append(
                f'<rect x="{LABEL_WIDTH}" y="{y}" width="{width}" height="{BAR_HEIGHT - 2}" '
                f'fill="{color}" fill-opacity="{opacity}"/>'
            )
            out.append(
                f'<text x="{LABEL_WIDTH + width + 4}" y="{y + BAR_HEIGHT - 4}" '
                f'class="value">{value:,}</text>'
            )
    out.append("</svg>")
    return "\n".join(out)


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="n">{v:,}</td>' if isinstance(v, int) else f"<td>{html.escape(str(v))}</td>"
            for v in row
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


STYLE = """
body { font-family: "DejaVu Sans", "Noto Sans", sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f0f0f0; text-align: left; } td.n { text-align: right; }
svg text { font-size: 12px; fill: #222; } svg text.value { fill: #555; }
.note { color: #666; font-size: 12px; }
"""


def render_html(figures: DayFigures) -> str:
    """A self-contained HTML page of the day: tables and inline SVG charts, no network."""
    day = figures.business_date
    programs, merchants, place_list = figures.programs, figures.merchants, places(figures)
    title = f"Honar Card — business date {day} ({jalali(day)})"
    program_chart = bar_chart(
        "Programs",
        [p.program for p in programs],
        [
            ("disbursed", [p.disbursed for p in programs]),
            ("spent", [p.spent_by_members for p in programs]),
            ("discounts funded", [p.discounts_funded for p in programs]),
            ("expired", [p.expired_back for p in programs]),
        ],
    )
    merchant_chart = bar_chart(
        "Merchants",
        [f"{m.name} ({m.city})" for m in merchants],
        [
            ("gross", [m.gross_amount for m in merchants]),
            ("net payable", [m.net_payable for m in merchants]),
        ],
    )
    place_chart = bar_chart(
        "Provinces and cities",
        [f"{p.province} / {p.city}" for p in place_list],
        [
            ("gross", [p.gross_amount for p in place_list]),
            ("net payable", [p.net_payable for p in place_list]),
        ],
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title>",
            f"<style>{STYLE}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>",
            '<p class="note">Amounts in IRR. Figures from the ledger: a merchant\'s net payable '
            "is the movement of its payable account on this business date.</p>",
            "<h2>Programs</h2>",
            program_chart,
            _html_table(PROGRAM_HEADERS, _program_rows(figures)),
            "<h2>Merchants</h2>",
            merchant_chart if merchants else "<p>No merchant activity.</p>",
            _html_table(MERCHANT_HEADERS, _merchant_rows(figures)),
            "<h2>Provinces and cities</h2>",
            place_chart if place_list else "<p>No merchant activity.</p>",
            _html_table(PLACE_HEADERS, _place_rows(figures)),
            "</body></html>",
            "",
        ]
    )
