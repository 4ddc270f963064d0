"""What ``pgwa`` prints: rich tables and the live progress view, drawn from the rows the
``api`` functions return (dicts of psycopg's dict_row)."""

from __future__ import annotations

from datetime import datetime

from rich.console import Group
from rich.table import Table

STAGES = ("total", "queued", "sent", "delivered", "read", "replied", "failed", "cancelled")


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M}" if moment else ""


def campaigns_table(rows: list[dict], title: str = "Campaigns") -> Table:
    table = Table(title=title)
    for column in ("id", "name", "status", *STAGES[:-1], "progress", "created"):
        table.add_column(column, justify="right" if column not in ("name", "status", "created") else "left")
    for r in rows:
        table.add_row(str(r["campaign_id"]), r["name"], r["status"],
                      *(f"{r[s]:,}" for s in STAGES[:-1]), _pct(r["progress"]),
                      r["created_at"].strftime("%Y-%m-%d %H:%M"))
    return table


def stats_tables(s: dict) -> list[Table]:
    funnel = Table(title=f"Campaign {s['campaign_id']}: {s['name']} ({s['status']})")
    funnel.add_column("stage")
    funnel.add_column("messages", justify="right")
    funnel.add_column("rate", justify="right")
    rates = {"delivered": s["delivery_rate"], "read": s["read_rate"], "replied": s["reply_rate"],
             "failed": s["failure_rate"]}
    for stage in STAGES:
        funnel.add_row(stage, f"{s[stage]:,}", _pct(rates[stage]) if stage in rates else "")
    funnel.add_row("progress", "", _pct(s["progress"]))
    templates = Table(title="Per template")
    for column in ("variant", "template", "total", "sent", "delivered", "read", "replied", "failed", "delivery"):
        templates.add_column(column, justify="left" if column == "template" else "right")
    for t in s["templates"]:
        templates.add_row(str(t["variant"]), f"{t['name']} ({t['language']})",
                          *(f"{t[k]:,}" for k in ("total", "sent", "delivered", "read", "replied", "failed")),
                          _pct(t["delivery_rate"]))
    errors = Table(title="Failures by error")
    for column in ("code", "category", "title", "count"):
        errors.add_column(column, justify="right" if column in ("code", "count") else "left")
    for e in s["errors"]:
        errors.add_row(str(e["error_code"]), e["category"], e["title"] or "", f"{e['count']:,}")
    return [funnel, templates, errors]


def limit_notes(s: dict) -> list[str]:
    """What the campaign waits for at its portfolio's messaging limit, and the messages Meta's
    per-user marketing cap withheld; nothing for a campaign with neither."""
    notes = []
    if s["waiting_for"] == "messaging_limit":
        notes.append(f"waiting for messaging limit until {when(s['resumes_at'])}")
    if s["days_at_limit"] and s["status"] not in ("completed", "cancelled"):
        notes.append(f"needs {_days(s['days_at_limit'])} at the messaging limit "
                     f"({s['messaging_limit']:,} new users per 24 hours)")
    if s["retrying"]:
        notes.append(f"retrying {s['retrying']:,}: withheld by Meta's per-user marketing cap, tried again "
                     "a day later")
    return notes


def _days(n: int) -> str:
    return f"{n} day" if n == 1 else f"{n} days"


def created_warning(days_at_limit: int | None, portfolio: dict | None) -> str | None:
    """A list that takes more than a day at its portfolio's messaging limit says so at creation."""
    if not days_at_limit or days_at_limit <= 1 or portfolio is None:
        return None
    return (f"needs {_days(days_at_limit)} at tier {portfolio['tier']} ({portfolio['messaging_limit']:,} new "
            "users per 24 hours); the rest waits in the queue")


def progress_view(s: dict) -> Group:
    done = s["total"] - s["queued"]
    width = 40
    filled = int(width * (s["progress"] or 0))
    bar = "█" * filled + "░" * (width - filled)
    last = s["timeline"][-1] if s["timeline"] else None
    rate = f"  last minute: {last['sent']:,} sent" if last else ""
    table = Table.grid(padding=(0, 2))
    table.add_row(f"[bold]campaign {s['campaign_id']}[/] {s['name']}", f"[bold]{s['status']}[/]")
    table.add_row(f"{bar} {_pct(s['progress'])}", f"{done:,} / {s['total']:,}{rate}")
    table.add_row("  ".join(f"{k} {s[k]:,}" for k in ("sent", "delivered", "read", "replied", "failed",
                                                    "cancelled")), "")
    for note in limit_notes(s):
        table.add_row(f"[yellow]{note}[/]", "")
    return Group(table)


def keys_table(rows: list[dict], tenant: int) -> Table:
    table = Table(title=f"API keys of tenant {tenant}")
    for column in ("id", "name", "prefix", "scope", "created", "expires", "last used", "limit/min", "revoked"):
        table.add_column(column)
    for k in rows:
        table.add_row(str(k["api_key_id"]), k["name"], k["key_prefix"], k["scope"], when(k["created_at"]),
                      when(k["expires_at"]), when(k["last_used_at"]),
                      str(k["rate_limit_per_minute"] or "default"), when(k["revoked_at"]))
    return table


def portfolios_table(rows: list[dict], tenant: int) -> Table:
    table = Table(title=f"Business portfolios of tenant {tenant}")
    for column in ("id", "business id", "tier", "limit", "used 24 h", "waiting until", "numbers"):
        table.add_column(column, justify="right" if column in ("id", "limit", "used 24 h") else "left")
    for p in rows:
        limit = p["messaging_limit"]
        table.add_row(str(p["portfolio_id"]), p["business_id"], p["tier"] or "unknown",
                      f"{limit:,}" if limit is not None else "unlimited",
                      f"{p['used_24h']:,}" if p["used_24h"] is not None else "",
                      when(p["budget_wait_until"]), ", ".join(map(str, p["number_ids"])))
    return table


def drift_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for column in ("scope", "key", "counter", "maintained", "actual", "drift"):
        table.add_column(column, justify="right" if column in ("maintained", "actual", "drift") else "left")
    for r in rows:
        table.add_row(r["scope"], r["key"], r["counter"], f"{r['maintained']:,}", f"{r['actual']:,}", f"{r['drift']:+,}")
    return table


def templates_table(rows: list[dict], title: str = "Templates") -> Table:
    table = Table(title=title)
    for column in ("id", "name", "language", "category", "status", "quality", "format", "waba", "updated"):
        table.add_column(column, justify="right" if column == "id" else "left")
    for t in rows:
        table.add_row(str(t["template_id"]), t["name"], t["language"], t["category"] or "", t["status"],
                      t.get("quality_score") or "", t.get("parameter_format") or "", t["waba_id"], when(t["updated_at"]))
    return table


def template_tables(t: dict) -> list[Table]:
    """A template (api.template_detail): its facts, the parameters a send needs, its campaigns."""
    facts = Table(title=f"Template {t['template_id']}: {t['name']} ({t['language']})", show_header=False)
    facts.add_column("field")
    facts.add_column("value")
    for field in ("status", "category", "previous_category", "parameter_format", "quality_score",
                  "rejected_reason", "meta_template_id", "waba_id"):
        if t.get(field) is not None:
            facts.add_row(field, str(t[field]))
    for c in t["components"]:
        text = c.get("text") or c.get("format") or ", ".join(
            f"{b.get('type')} {b.get('text') or ''}".strip() for b in c.get("buttons", []))
        facts.add_row(str(c.get("type", "")).lower(), text)
    params = Table(title="Parameters a send needs")
    for column in ("component", "index", "name", "kind", "required", "example", "mapping"):
        params.add_column(column)
    for p in t["parameters"]:
        params.add_row(p["component"], str(p["index"]), p["parameter_name"] or "", p["kind"],
                       "yes" if p["required"] else "no", p["example"] or "", p["mapping"] or "")
    campaigns = Table(title="Unfinished campaigns sending it")
    for column in ("campaign", "name", "status"):
        campaigns.add_column(column)
    for c in t["campaigns"]:
        campaigns.add_row(str(c["campaign_id"]), c["name"], c["status"])
    return [facts, params, campaigns]
