"""The ``pgwa`` commands: each opens a connection, sends the named queries of
pgwa/queries.sql (the same texts the local stack, the tests and the benchmarks send) and
prints what they return (pgwa/cli/views.py)."""

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
from rich.console import Console
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from pgwa import numbers
from pgwa.cli.views import (
    campaigns_table,
    created_warning,
    drift_table,
    keys_table,
    limit_notes,
    portfolios_table,
    progress_view,
    stats_tables,
    template_tables,
    templates_table,
    when,
)
from pgwa.config import ROOT, Settings, database_url
from pgwa.contacts import stage_csv
from pgwa.queries import queries

FINAL = ("completed", "cancelled")


class CliError(Exception):
    """A usage error: printed without a traceback."""


# -- helpers ----------------------------------------------------------------------------------

def connect() -> psycopg.Connection:
    return psycopg.connect(database_url(), autocommit=True, application_name="pgwa-cli")


def _value(conn: psycopg.Connection, query: str, params: dict[str, Any]) -> Any:
    """The first value of the first row, or None without a row."""
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def _dicts(conn: psycopg.Connection, query: str, params: dict[str, Any]) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()


def tenant_id(conn: psycopg.Connection, tenant: str | None) -> int:
    tenant = tenant or os.environ.get("PGWA_TENANT")
    if not tenant:
        raise CliError("give --tenant (an id or a name) or set PGWA_TENANT")
    if tenant.isdigit():
        return int(tenant)
    found = _value(conn, queries["tenant_by_name"], {"name": tenant})
    if found is None:
        raise CliError(f"no tenant named {tenant!r}")
    return found


def number_id(conn: psycopg.Connection, tenant: int, number: str) -> int:
    """A number_id, or the number of this tenant with that phone_number_id (Meta's id)."""
    found = _value(conn, queries["tenant_number"], {"tenant_id": tenant, "number": number})
    if found is None:
        raise CliError(f"tenant {tenant} has no number {number!r} (see SELECT * FROM api.numbers({tenant}))")
    return found


def parse_template(spec: str) -> dict[str, Any]:
    """``name:language[:param,param,...]``: a param is a CSV column, or ``=constant``; or a
    whole template mapping as a JSON object (header, body, buttons: api.create_campaign)."""
    if spec.lstrip().startswith("{"):
        try:
            mapping = orjson.loads(spec)
        except orjson.JSONDecodeError as exc:
            raise CliError(f"--template {spec!r}: not a JSON object ({exc})") from None
        if not isinstance(mapping, dict):
            raise CliError(f"--template {spec!r}: not a JSON object")
        return mapping
    parts = spec.split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise CliError(f"--template {spec!r}: expected name:language[:param,...], e.g. order_update:en_US:name")
    params = []
    for p in parts[2].split(",") if len(parts) == 3 and parts[2] else []:
        params.append({"value": p[1:]} if p.startswith("=") else {"column": p.strip()})
    return {"name": parts[0], "language": parts[1], "params": params}


def expiry(text: str) -> datetime:
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
        new_id = _value(conn, queries["create_tenant"], {"name": args.name})
    console.print(f"tenant {new_id} created: {args.name}")
    return 0


def cmd_number(args: argparse.Namespace, console: Console) -> int:
    """register: ask the Graph API first (as POST /v1/numbers does); transfer: the
    operator's move of a number to another tenant (api.transfer_number, no client role)."""
    with connect() as conn:
        if args.action == "transfer":
            to = tenant_id(conn, args.to)
            moved = _value(conn, queries["transfer_number"], {
                "phone_number_id": args.phone_number_id, "tenant_id": to, "waba_id": args.waba_id})
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


def cmd_key(args: argparse.Namespace, console: Console) -> int:
    with connect() as conn:
        tenant = tenant_id(conn, args.tenant)
        if args.action == "create":
            [key] = _dicts(conn, queries["create_api_key"], {
                "tenant_id": tenant, "name": args.name, "scope": args.scope, "expires_at": args.expires,
                "rate_limit_per_minute": args.rate_limit})
            expires = f", expires {when(key['expires_at'])}" if key["expires_at"] else ""
            Console(stderr=True).print(f"API key {key['api_key_id']} for tenant {tenant} ({args.name}, scope "
                                       f"{key['scope']}{expires}); shown once, keep it:", highlight=False)
            print(key["key"])
        elif args.action == "revoke":
            conn.execute(queries["revoke_api_key"], {"tenant_id": tenant, "api_key_id": args.id})
            console.print(f"API key {args.id} revoked")
        else:
            console.print(keys_table(_dicts(conn, queries["api_keys"], {"tenant_id": tenant}), tenant))
    return 0


def cmd_campaign_create(args: argparse.Namespace, console: Console) -> int:
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
            [created] = _dicts(conn, queries["create_campaign"], {
                "tenant_id": tenant, "number_id": number, "name": args.name or path.stem,
                "templates": orjson.dumps(templates).decode(), "on_invalid": args.on_invalid,
                "scheduled_at": args.schedule, "start": args.start,
                "default_country_code": args.default_country_code})
        days = created["days_at_limit"]
        warning = created_warning(days, _portfolio_of(conn, tenant, number)) if days and days > 1 else None
    console.print(f"campaign [bold]{created['campaign_id']}[/] {created['status']}: {created['total']:,} messages "
                  f"queued; {created['skipped_invalid']:,} invalid, {created['skipped_opted_out']:,} opted out, "
                  f"{created['duplicates_removed']:,} duplicates removed")
    for bad in created["invalid_rows"][:10]:
        console.print(f"  row {bad['row']} {bad['value']!r}: {bad['reason']}", highlight=False)
    if warning:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    print(created["campaign_id"])
    return 0


def _portfolio_of(conn: psycopg.Connection, tenant: int, number: int) -> dict | None:
    """The portfolio whose messaging limit the number shares."""
    rows = _dicts(conn, queries["portfolios"], {"tenant_id": tenant})
    return next((p for p in rows if number in p["number_ids"]), None)


LIFECYCLE = {"start": queries["start_campaign"], "pause": queries["pause_campaign"],
             "resume": queries["resume_campaign"], "cancel": queries["cancel_campaign"]}


def cmd_campaign_action(args: argparse.Namespace, console: Console) -> int:
    with connect() as conn:
        tenant = tenant_id(conn, args.tenant)
        status = _value(conn, LIFECYCLE[args.action], {"tenant_id": tenant, "campaign_id": args.id})
    console.print(f"campaign {args.id}: {status}")
    return 0


def _stats(conn: psycopg.Connection, tenant: int, campaign: int) -> dict:
    return _dicts(conn, queries["campaign_stats"], {"tenant_id": tenant, "campaign_id": campaign})[0]


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
    with connect() as conn:
        tenant = tenant_id(conn, args.tenant)
        rows = _dicts(conn, queries["campaigns"], {"tenant_id": tenant, "status": args.status,
                                                   "before_id": args.before, "limit": args.limit})
    console.print(campaigns_table(rows, f"Campaigns of tenant {tenant}"))
    return 0


def cmd_stats(args: argparse.Namespace, console: Console) -> int:
    with connect() as conn:
        stats = _stats(conn, tenant_id(conn, args.tenant), args.id)
    funnel, *rest = stats_tables(stats)
    console.print(funnel)
    for note in limit_notes(stats):
        console.print(note, highlight=False)
    for table in rest:
        console.print(table)
    return 0


def cmd_portfolio(args: argparse.Namespace, console: Console) -> int:
    """list: the tenant's portfolios and their messaging limits; set-tier: a number's
    portfolio's tier (as Meta reports it), optionally in the business portfolio --business-id."""
    with connect() as conn:
        tenant = tenant_id(conn, args.tenant)
        if args.action == "set-tier":
            number = number_id(conn, tenant, args.number)
            [p] = _dicts(conn, queries["set_messaging_limit"], {
                "tenant_id": tenant, "number_id": number, "tier": args.tier, "business_id": args.business_id})
            limit = f"{p['messaging_limit']:,} new users per 24 hours" if p["messaging_limit"] else "unlimited"
            console.print(f"portfolio {p['portfolio_id']} (business {p['business_id']}): {p['tier']}, {limit}; "
                          f"numbers {', '.join(map(str, p['number_ids']))}", highlight=False)
        else:
            console.print(portfolios_table(_dicts(conn, queries["portfolios"], {"tenant_id": tenant}), tenant))
    return 0


def cmd_reconcile(args: argparse.Namespace, console: Console) -> int:
    with connect() as conn:
        tenant = tenant_id(conn, args.tenant)
        rows = _dicts(conn, queries["reconcile_campaign"], {"tenant_id": tenant, "campaign_id": args.id,
                                                            "fix": args.fix})
    drifting = [r for r in rows if r["drift"]]
    title = f"Campaign {args.id}: {len(drifting)} counter(s) drifting" + (", fixed" if args.fix else "")
    console.print(drift_table(rows if args.all else drifting, title))
    return 1 if drifting and not args.fix else 0


# -- media ------------------------------------------------------------------------------------

def cmd_media(args: argparse.Namespace, console: Console) -> int:
    """``media upload FILE --number N``: upload to Meta (reused when the same bytes are valid);
    ``media list``: the tenant's media, newest first."""
    from rich.table import Table

    from pgwa.media import LIST_MEDIA, MediaError, upload_file

    with connect() as conn:
        tenant = tenant_id(conn, args.tenant)
        number = number_id(conn, tenant, args.number) if args.number else None
        if args.action == "upload":
            if number is None:
                raise CliError("give --number (number_id or Meta's phone_number_id)")
            path = Path(args.file)
            if not path.is_file():
                raise CliError(f"no file {args.file!r}")
            try:
                media = upload_file(conn, Settings.from_env(), tenant, number, path, args.mime)
            except MediaError as exc:
                raise CliError(str(exc)) from None
            console.print(f"media {media['media_id']}: {media['media_type']} {media['mime_type']}, "
                          f"{media['size_bytes']} bytes, Meta id {media['meta_media_id']}, expires "
                          f"{when(media['expires_at'])}" + (" (reused: the same bytes were uploaded)"
                                                             if media["reused"] else ""), highlight=False)
            return 0
        rows = _dicts(conn, LIST_MEDIA, {"tenant_id": tenant, "number_id": number, "direction": args.direction,
                                         "limit": args.limit})
    table = Table("media", "number", "dir", "type", "mime", "bytes", "state", "file", "expires")
    for m in rows:
        table.add_row(str(m["media_id"]), str(m["number_id"]), m["direction"], m["media_type"], m["mime_type"] or "",
                      str(m["size_bytes"] or ""), m["state"] + (f" ({m['last_error']})" if m["last_error"] else ""),
                      m["filename"] or "", when(m["expires_at"]))
    console.print(table)
    return 0


# -- templates --------------------------------------------------------------------------------

def cmd_template(args: argparse.Namespace, console: Console) -> int:
    """list / show ID: the tenant's templates; create: a definition (a JSON file, ``-`` for
    stdin) through Meta's API, PENDING until Meta's review; delete ID: this language at Meta
    (refused while campaigns send it unless --force); sync: every template of the number's
    WABA as Meta lists it. The WABA's token is read from the database, never printed."""
    from api.errors import ApiError
    from api.graph_templates import remove_template, submit_template, sync_templates

    graph = os.environ.get("GRAPH_BASE_URL", Settings.graph_base_url)
    with connect() as conn:
        tenant = tenant_id(conn, args.tenant)
        try:
            if args.action == "list":
                rows = _dicts(conn, queries["templates"], {"tenant_id": tenant, "waba_id": args.waba_id,
                                                           "status": args.status})
                console.print(templates_table(rows, f"Templates of tenant {tenant}"))
            elif args.action == "show":
                detail = _value(conn, queries["template_detail"], {"tenant_id": tenant, "template_id": args.id})
                for table in template_tables(detail):
                    console.print(table)
            elif args.action == "create":
                text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
                try:
                    definition = orjson.loads(text)
                except orjson.JSONDecodeError as exc:
                    raise CliError(f"{args.file}: not JSON ({exc})") from None
                if not isinstance(definition, dict):
                    raise CliError(f"{args.file}: not a JSON object (name, language, category, components)")
                number = number_id(conn, tenant, args.number) if args.number else None
                template, submitted = submit_template(conn, tenant, definition, graph, waba_id=args.waba_id,
                                                      number_id=number)
                console.print(f"template {template['template_id']} {template['name']} ({template['language']}): "
                              f"{template['status']}" + ("" if submitted else " (already there; Meta not asked)"),
                              highlight=False)
            elif args.action == "delete":
                template = remove_template(conn, tenant, args.id, graph, force=args.force)
                console.print(f"template {args.id} {template['name']} ({template['language']}): {template['status']}",
                              highlight=False)
            else:
                creds = _dicts(conn, queries["graph_credentials"], {"tenant_id": tenant,
                                                                     "number_id": number_id(conn, tenant, args.number)})[0]
                received = sync_templates(conn, tenant, creds["waba_id"], creds["access_token"], graph,
                                          creds["graph_api_version"])
                console.print(f"{received} template(s) of WABA {creds['waba_id']} synced", highlight=False)
        except ApiError as exc:
            raise CliError(f"{exc.sqlstate}: {exc.message}" + (f"\nhint: {exc.hint}" if exc.hint else "")) from None
    return 0
