"""``pgwa``: the operator's command line. It talks to PostgreSQL (DATABASE_URL, or the
project's local cluster) through the same ``api`` functions every client uses.

::

    pgwa db up | migrate | psql | url
    pgwa serve api | worker | sim [ARGS...]
    pgwa tenant create NAME
    pgwa number register --tenant T --phone-number-id ID --waba-id ID  (token in WHATSAPP_ACCESS_TOKEN)
    pgwa number transfer PHONE_NUMBER_ID --to T [--waba-id ID]       (operator only)
    pgwa key create --tenant T [--name N] [--scope read|send|admin] [--expires WHEN] [--rate-limit N]
    pgwa key list --tenant T  |  key revoke ID --tenant T
    pgwa campaign create --csv FILE --tenant T --number N --template name:lang[:param,...] ... [--start]
    pgwa campaign start|pause|resume|cancel ID --tenant T
    pgwa campaign watch ID --tenant T
    pgwa campaigns --tenant T [--status S] [--limit N]
    pgwa stats ID --tenant T
    pgwa reconcile ID --tenant T [--fix]

A tenant is given by id or by name (or PGWA_TENANT); a number by its number_id or Meta's
phone_number_id. A template parameter is a CSV column name, or ``=text`` for a constant:
``--template order_update:en_US:name,order_no,=ACME``. Errors print the SQLSTATE, the
message and the hint, and exit 1.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import orjson
import psycopg
from psycopg.rows import dict_row
from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from pgwa import numbers
from pgwa.config import ROOT, Settings, database_url

FINAL = ("completed", "cancelled")
STAGES = ("total", "queued", "sent", "delivered", "read", "replied", "failed", "cancelled")


class CliError(Exception):
    """A usage error: printed without a traceback."""


# -- helpers ----------------------------------------------------------------------------------

def connect() -> psycopg.Connection:
    return psycopg.connect(database_url(), autocommit=True, application_name="pgwa-cli")


def tenant_id(conn: psycopg.Connection, tenant: str | None) -> int:
    tenant = tenant or os.environ.get("PGWA_TENANT")
    if not tenant:
        raise CliError("give --tenant (an id or a name) or set PGWA_TENANT")
    if tenant.isdigit():
        return int(tenant)
    row = conn.execute("SELECT tenant_id FROM core.tenants WHERE name = %s", (tenant,)).fetchone()
    if row is None:
        raise CliError(f"no tenant named {tenant!r}")
    return row[0]


def number_id(conn: psycopg.Connection, tenant: int, number: str) -> int:
    """A number_id, or the number of this tenant with that phone_number_id (Meta's id)."""
    row = conn.execute("SELECT number_id FROM api.numbers(%s) WHERE number_id::text = %s OR phone_number_id = %s"
                       " ORDER BY number_id::text = %s DESC LIMIT 1", (tenant, number, number, number)).fetchone()
    if row is None:
        raise CliError(f"tenant {tenant} has no number {number!r} (see SELECT * FROM api.numbers({tenant}))")
    return row[0]


def parse_template(spec: str) -> dict[str, Any]:
    """``name:language[:param,param,...]``: a param is a CSV column, or ``=constant``."""
    parts = spec.split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise CliError(f"--template {spec!r}: expected name:language[:param,...], e.g. order_update:en_US:name")
    params = []
    for p in parts[2].split(",") if len(parts) == 3 and parts[2] else []:
        params.append({"value": p[1:]} if p.startswith("=") else {"column": p.strip()})
    return {"name": parts[0], "language": parts[1], "params": params}


def _read_lines(source: IO[bytes], advance, every: int = 1 << 16) -> Iterator[str]:
    """Text lines of a binary file, reporting bytes read (for the progress bar) every 64 KiB."""
    pending = 0
    for i, raw in enumerate(source):
        pending += len(raw)
        if pending >= every:
            advance(pending)
            pending = 0
        yield raw.decode("utf-8-sig" if i == 0 else "utf-8")
    advance(pending)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


# -- tables -----------------------------------------------------------------------------------

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
    return Group(table)


# -- commands ---------------------------------------------------------------------------------

def cmd_db(args: argparse.Namespace, console: Console) -> int:
    if args.action == "migrate":
        from pgwa.migrate import main as migrate_main
        return migrate_main()
    if args.action == "url":
        print(database_url())
        return 0
    return subprocess.call([str(ROOT / "scripts" / "db.sh"), args.action])


def cmd_serve(args: argparse.Namespace, console: Console) -> int:
    module = {"api": "api", "worker": "worker", "sim": "sim"}[args.part]
    os.execv(sys.executable, [sys.executable, "-m", module, *args.rest])
    return 0  # pragma: no cover


def cmd_tenant(args: argparse.Namespace, console: Console) -> int:
    with connect() as conn:
        new_id = conn.execute("SELECT api.create_tenant(%s)", (args.name,)).fetchone()[0]
    console.print(f"tenant {new_id} created: {args.name}")
    return 0


def cmd_number(args: argparse.Namespace, console: Console) -> int:
    """register: ask the Graph API first (as POST /v1/numbers does); transfer: the
    operator's move of a number to another tenant (api.transfer_number, no client role)."""
    with connect() as conn:
        if args.action == "transfer":
            to = tenant_id(conn, args.to)
            moved = conn.execute("SELECT api.transfer_number(%s, %s, %s)",
                                 (args.phone_number_id, to, args.waba_id)).fetchone()[0]
            console.print(f"number {moved} ({args.phone_number_id}) moved to tenant {to}; it stays paused "
                          "until that tenant registers it with its own token")
            return 0
        token = os.environ.get(args.token_env, "")
        if not token:
            raise CliError(f"set {args.token_env} to the number's access token (kept off the command line)")
        app_secret = os.environ.get(args.app_secret_env) if args.app_secret_env else None
        tenant = tenant_id(conn, args.tenant)
        try:
            number = numbers.register_number(
                conn, tenant, args.phone_number_id, args.waba_id, token, app_secret=app_secret,
                throughput_mps=args.throughput, graph_base_url=os.environ.get("GRAPH_BASE_URL", Settings.graph_base_url))
        except numbers.GraphCheckError as exc:
            err = Console(stderr=True)
            err.print(f"pgwa: {exc.sqlstate}: {exc.message}", highlight=False)
            err.print(f"hint: {exc.hint}", highlight=False)
            return 1
    console.print(f"number {number} ({args.phone_number_id}) registered for tenant {tenant}: Meta confirmed it")
    return 0


def _expiry(text: str) -> datetime:
    """--expires: an ISO 8601 time (with its offset) or a span from now: 90d, 12h, 30m."""
    spans = {"d": "days", "h": "hours", "m": "minutes"}
    if text[:-1].isdigit() and text[-1:] in spans:
        return datetime.now(UTC) + timedelta(**{spans[text[-1]]: int(text[:-1])})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a time (2026-12-31T00:00:00Z) nor a span "
                                         "(90d, 12h, 30m)") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a time zone offset, e.g. 2026-12-31T00:00:00+00:00")
    return moment


def _when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M}" if moment else ""


def cmd_key(args: argparse.Namespace, console: Console) -> int:
    with connect() as conn:
        tenant = tenant_id(conn, args.tenant)
        if args.action == "create":
            key = conn.cursor(row_factory=dict_row).execute(
                "SELECT * FROM api.create_api_key(%s, %s, %s, %s, %s)",
                (tenant, args.name, args.scope, args.expires, args.rate_limit)).fetchone()
            expiry = f", expires {_when(key['expires_at'])}" if key["expires_at"] else ""
            Console(stderr=True).print(f"API key {key['api_key_id']} for tenant {tenant} ({args.name}, scope "
                                       f"{key['scope']}{expiry}); shown once, keep it:", highlight=False)
            print(key["key"])
        elif args.action == "revoke":
            conn.execute("SELECT api.revoke_api_key(%s, %s)", (tenant, args.id))
            console.print(f"API key {args.id} revoked")
        else:
            table = Table(title=f"API keys of tenant {tenant}")
            for column in ("id", "name", "prefix", "scope", "created", "expires", "last used", "limit/min",
                           "revoked"):
                table.add_column(column)
            for k in conn.cursor(row_factory=dict_row).execute("SELECT * FROM api.api_keys(%s)", (tenant,)):
                table.add_row(str(k["api_key_id"]), k["name"], k["key_prefix"], k["scope"], _when(k["created_at"]),
                              _when(k["expires_at"]), _when(k["last_used_at"]),
                              str(k["rate_limit_per_minute"] or "default"), _when(k["revoked_at"]))
            console.print(table)
    return 0


def cmd_campaign_create(args: argparse.Namespace, console: Console) -> int:
    from pgwa.contacts import stage_csv

    path = Path(args.csv)
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    templates = [parse_template(t) for t in args.template]
    with connect() as conn:
        tenant = tenant_id(conn, args.tenant)
        number = number_id(conn, tenant, args.number)
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TextColumn("{task.fields[rows]:,} rows"), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False, disable=args.quiet) as bar, \
                path.open("rb") as source, conn.transaction():
            task = bar.add_task("uploading", total=path.stat().st_size, rows=0)
            rows = stage_csv(conn, _read_lines(source, lambda n: bar.advance(task, n)),
                             progress=lambda count: bar.update(task, rows=count))
            bar.update(task, description="creating", rows=rows)
            created = conn.cursor(row_factory=dict_row).execute(
                "SELECT * FROM api.create_campaign(%s, %s, %s, %s::jsonb, %s, %s, %s, %s)",
                (tenant, number, args.name or path.stem, orjson.dumps(templates).decode(), args.on_invalid,
                 args.schedule, args.start, args.default_country_code)).fetchone()
    console.print(f"campaign [bold]{created['campaign_id']}[/] {created['status']}: {created['total']:,} messages "
                  f"queued; {created['skipped_invalid']:,} invalid, {created['skipped_opted_out']:,} opted out, "
                  f"{created['duplicates_removed']:,} duplicates removed")
    for bad in created["invalid_rows"][:10]:
        console.print(f"  row {bad['row']} {bad['value']!r}: {bad['reason']}", highlight=False)
    print(created["campaign_id"])
    return 0


LIFECYCLE = {
    "start": "SELECT api.start_campaign(%s, %s)",
    "pause": "SELECT api.pause_campaign(%s, %s)",
    "resume": "SELECT api.resume_campaign(%s, %s)",
    "cancel": "SELECT api.cancel_campaign(%s, %s)",
}


def cmd_campaign_action(args: argparse.Namespace, console: Console) -> int:
    with connect() as conn:
        tenant = tenant_id(conn, args.tenant)
        status = conn.execute(LIFECYCLE[args.action], (tenant, args.id)).fetchone()[0]
    console.print(f"campaign {args.id}: {status}")
    return 0


def _stats(conn: psycopg.Connection, tenant: int, campaign: int) -> dict:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM api.campaign_stats(%s, %s)", (tenant, campaign)).fetchone()


def cmd_campaign_watch(args: argparse.Namespace, console: Console) -> int:
    with connect() as conn:
        tenant = tenant_id(conn, args.tenant)
        stats = _stats(conn, tenant, args.id)
        with Live(progress_view(stats), console=console, refresh_per_second=4, transient=False) as live:
            try:
                while stats["status"] not in FINAL and not (args.once):
                    time.sleep(args.interval)
                    stats = _stats(conn, tenant, args.id)
                    live.update(progress_view(stats))
            except KeyboardInterrupt:
                pass
    return 0


def cmd_campaigns(args: argparse.Namespace, console: Console) -> int:
    with connect() as conn, conn.cursor(row_factory=dict_row) as cur:
        tenant = tenant_id(conn, args.tenant)
        rows = cur.execute("SELECT * FROM api.campaigns(%s, %s, %s, %s)",
                           (tenant, args.status, args.before, args.limit)).fetchall()
    console.print(campaigns_table(rows, f"Campaigns of tenant {tenant}"))
    return 0


def cmd_stats(args: argparse.Namespace, console: Console) -> int:
    with connect() as conn:
        stats = _stats(conn, tenant_id(conn, args.tenant), args.id)
    for table in stats_tables(stats):
        console.print(table)
    return 0


def cmd_reconcile(args: argparse.Namespace, console: Console) -> int:
    with connect() as conn, conn.cursor(row_factory=dict_row) as cur:
        tenant = tenant_id(conn, args.tenant)
        rows = cur.execute("SELECT * FROM api.reconcile_campaign(%s, %s, %s)", (tenant, args.id, args.fix)).fetchall()
    drifting = [r for r in rows if r["drift"]]
    table = Table(title=f"Campaign {args.id}: {len(drifting)} counter(s) drifting" + (", fixed" if args.fix else ""))
    for column in ("scope", "key", "counter", "maintained", "actual", "drift"):
        table.add_column(column, justify="right" if column in ("maintained", "actual", "drift") else "left")
    for r in rows if args.all else drifting:
        table.add_row(r["scope"], r["key"], r["counter"], f"{r['maintained']:,}", f"{r['actual']:,}", f"{r['drift']:+,}")
    console.print(table)
    return 1 if drifting and not args.fix else 0


# -- parser -----------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pgwa", description="Operate pgwa: the database, the services, campaigns.")
    sub = p.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="the project database")
    db.add_argument("action", choices=["up", "migrate", "psql", "url", "stop"])
    db.set_defaults(run=cmd_db)

    serve = sub.add_parser("serve", help="run the API, a worker or the simulator in the foreground")
    serve.add_argument("part", choices=["api", "worker", "sim"])
    serve.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the part (e.g. sim's --port)")
    serve.set_defaults(run=cmd_serve)

    tenant = sub.add_parser("tenant", help="tenants").add_subparsers(dest="action", required=True)
    create = tenant.add_parser("create", help="create a tenant")
    create.add_argument("name")
    create.set_defaults(run=cmd_tenant)

    number = sub.add_parser("number", help="WhatsApp numbers").add_subparsers(dest="action", required=True)
    n = number.add_parser("register", help="register a tenant's number once the Graph API confirms it")
    n.add_argument("--tenant")
    n.add_argument("--phone-number-id", required=True)
    n.add_argument("--waba-id", required=True)
    n.add_argument("--token-env", default="WHATSAPP_ACCESS_TOKEN", metavar="VAR",
                   help="the variable holding the access token (default WHATSAPP_ACCESS_TOKEN)")
    n.add_argument("--app-secret-env", metavar="VAR",
                   help="the variable holding the number's app secret (empty clears it; unset keeps it)")
    n.add_argument("--throughput", type=int, default=80, help="messages per second Meta allows (80..1000)")
    n.set_defaults(run=cmd_number)
    t = number.add_parser("transfer", help="operator: move a number to another tenant")
    t.add_argument("phone_number_id")
    t.add_argument("--to", required=True, help="the tenant (id or name) that now holds the number")
    t.add_argument("--waba-id", help="the WABA that holds the number now (default: unchanged)")
    t.set_defaults(run=cmd_number)

    key = sub.add_parser("key", help="API keys").add_subparsers(dest="action", required=True)
    for action in ("create", "list", "revoke"):
        k = key.add_parser(action)
        k.add_argument("--tenant")
        if action == "create":
            k.add_argument("--name", default="api")
            k.add_argument("--scope", choices=("read", "send", "admin"), default="admin",
                           help="read: GET routes; send: also campaigns, contacts, inbox; admin: everything "
                                "(default)")
            k.add_argument("--expires", type=_expiry, metavar="WHEN",
                           help="an ISO 8601 time or a span from now (90d, 12h, 30m); default never")
            k.add_argument("--rate-limit", type=int, metavar="N",
                           help="requests a minute; default the platform's (core.settings)")
        if action == "revoke":
            k.add_argument("id", type=int)
        k.set_defaults(run=cmd_key)

    campaign = sub.add_parser("campaign", help="one campaign").add_subparsers(dest="action", required=True)
    c = campaign.add_parser("create", help="create a campaign from a CSV (streamed with COPY)")
    c.add_argument("--csv", required=True)
    c.add_argument("--tenant")
    c.add_argument("--number", required=True, help="number_id or Meta's phone_number_id")
    c.add_argument("--template", action="append", required=True, metavar="NAME:LANG[:PARAM,...]",
                   help="repeat for an A/B split; PARAM is a CSV column or =constant")
    c.add_argument("--name")
    c.add_argument("--start", action="store_true", help="start sending at once")
    c.add_argument("--schedule", metavar="TIMESTAMP", help="start at this time (ISO 8601)")
    c.add_argument("--on-invalid", choices=["reject", "skip"], default="reject")
    c.add_argument("--default-country-code", metavar="CC")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(run=cmd_campaign_create)
    for action in ("start", "pause", "resume", "cancel"):
        a = campaign.add_parser(action)
        a.add_argument("id", type=int)
        a.add_argument("--tenant")
        a.set_defaults(run=cmd_campaign_action)
    w = campaign.add_parser("watch", help="live progress until the campaign finishes (Ctrl-C to stop)")
    w.add_argument("id", type=int)
    w.add_argument("--tenant")
    w.add_argument("--interval", type=float, default=1.0)
    w.add_argument("--once", action="store_true", help="show once and exit")
    w.set_defaults(run=cmd_campaign_watch)

    cs = sub.add_parser("campaigns", help="list campaigns with live counters")
    cs.add_argument("--tenant")
    cs.add_argument("--status")
    cs.add_argument("--before", type=int, help="keyset: campaigns older than this id")
    cs.add_argument("--limit", type=int, default=50)
    cs.set_defaults(run=cmd_campaigns)

    st = sub.add_parser("stats", help="a campaign's funnel, templates and errors")
    st.add_argument("id", type=int)
    st.add_argument("--tenant")
    st.set_defaults(run=cmd_stats)

    rc = sub.add_parser("reconcile", help="recount a campaign's counters from its messages")
    rc.add_argument("id", type=int)
    rc.add_argument("--tenant")
    rc.add_argument("--fix", action="store_true", help="set drifting counters to the recount")
    rc.add_argument("--all", action="store_true", help="show every counter, not only drifting ones")
    rc.set_defaults(run=cmd_reconcile)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    console = Console()
    err = Console(stderr=True)
    try:
        return args.run(args, console)
    except CliError as exc:
        err.print(f"pgwa: {exc}", highlight=False)
        return 2
    except psycopg.Error as exc:
        diag = exc.diag
        err.print(f"pgwa: {diag.sqlstate or 'error'}: {diag.message_primary or exc}", highlight=False)
        if diag.message_hint:
            err.print(f"hint: {diag.message_hint}", highlight=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())
