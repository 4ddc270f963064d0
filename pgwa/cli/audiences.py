"""The ``pgwa`` commands of contacts, segments, retargeting and the recipient report::

    pgwa contact list --tenant T [--phone P] [--name N] [--tag T] [--filter JSON] [--before ID] [--limit N]
    pgwa contact show|delete ID --tenant T
    pgwa contact edit ID --tenant T [--name N] [--field name=value ...] [--unset name ...] [--tag t ...] [--untag t ...]
    pgwa contact export --tenant T [--segment ID | --filter JSON] [--out FILE]
    pgwa contact field list|define NAME TYPE|delete NAME --tenant T
    pgwa segment list --tenant T  |  segment save NAME FILTER_JSON --tenant T [--id ID]
    pgwa segment count (ID | --filter JSON | --tags a,b) --tenant T  |  segment delete ID --tenant T
    pgwa segment campaign (ID | --filter JSON | --tags a,b) --tenant T --number N --template SPEC ... [--start]
    pgwa campaign retarget ID failed|not_delivered|not_read|not_replied --tenant T [--template SPEC ...] [--start]
    pgwa campaign report ID --tenant T [--format csv|json] [--out FILE]

Each calls the ``api`` function its name says; streamed outputs FETCH a cursor a slice at a
time (constant memory however many rows).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import IO, Any

import orjson
import psycopg
from rich.console import Console
from rich.table import Table

from pgwa.cli.commands import (
    CliError,
    _dicts,
    _value,
    connect,
    number_id,
    parse_template,
    tenant_id,
)

SEARCH = """SELECT * FROM api.search_contacts(%(tenant_id)s::bigint, %(phone)s::text, %(name)s::text, %(tag)s::text,
                                      %(filter)s::jsonb, NULL, %(before_id)s::bigint, %(limit)s::integer)"""
CONTACT = "SELECT * FROM api.contact(%(tenant_id)s::bigint, %(id)s::bigint)"
UPDATE = """SELECT * FROM api.update_contact(%(tenant_id)s::bigint, %(id)s::bigint, %(name)s::text, %(fields)s::jsonb,
                                      %(add)s::text[], %(remove)s::text[])"""
DELETE = "SELECT * FROM api.delete_contact(%(tenant_id)s::bigint, %(id)s::bigint)"
FIELDS = "SELECT * FROM api.contact_fields(%(tenant_id)s::bigint)"
DEFINE_FIELD = "SELECT * FROM api.define_contact_field(%(tenant_id)s::bigint, %(name)s::text, %(type)s::text)"
DELETE_FIELD = "SELECT api.delete_contact_field(%(tenant_id)s::bigint, %(name)s::text)"
SEGMENTS = "SELECT * FROM api.segments(%(tenant_id)s::bigint)"
SAVE_SEGMENT = "SELECT * FROM api.save_segment(%(tenant_id)s::bigint, %(name)s::text, %(filter)s::jsonb, %(id)s::bigint)"
DELETE_SEGMENT = "SELECT api.delete_segment(%(tenant_id)s::bigint, %(id)s::bigint)"
COUNT = """SELECT api.segment_count(%(tenant_id)s::bigint, %(id)s::bigint, %(filter)s::jsonb, %(tags)s::text[])"""
FROM_SEGMENT = """SELECT * FROM api.create_campaign_from_segment(
    %(tenant_id)s::bigint, %(number_id)s::bigint, %(name)s::text, %(templates)s::jsonb, %(id)s::bigint,
    %(filter)s::jsonb, %(tags)s::text[], %(scheduled_at)s::timestamptz, %(start)s::boolean, %(on_invalid)s::text)"""
RETARGET = """SELECT * FROM api.retarget_campaign(%(tenant_id)s::bigint, %(id)s::bigint, %(who)s::text, %(name)s::text,
    %(templates)s::jsonb, %(scheduled_at)s::timestamptz, %(start)s::boolean, NULL, %(on_invalid)s::text)"""
OPEN_REPORT = "SELECT api.open_campaign_recipients(%(tenant_id)s::bigint, %(id)s::bigint, %(format)s::text, 'report')"
OPEN_EXPORT = "SELECT api.open_contacts_export(%(tenant_id)s::bigint, %(id)s::bigint, %(filter)s::jsonb, 'export')"
FETCH = {"report": "FETCH FORWARD 10000 FROM report", "export": "FETCH FORWARD 10000 FROM export"}


def _json(text: str | None, what: str) -> str | None:
    if text is None:
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise CliError(f"{what} is not JSON: {exc}") from None
    return orjson.dumps(value).decode()


def _field_values(pairs: list[str], unset: list[str]) -> str | None:
    """name=value pairs (a value that parses as JSON is taken as JSON: 42, true) and names to unset."""
    if not pairs and not unset:
        return None
    fields: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep:
            raise CliError(f"--field {pair!r} is not name=value")
        try:
            fields[name] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            fields[name] = raw
    fields.update({name: None for name in unset})
    return orjson.dumps(fields).decode()


def _contacts_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for column in ("id", "phone", "name", "tags", "fields", "opted out"):
        table.add_column(column)
    for r in rows:
        table.add_row(str(r["contact_id"]), r["wa_id"] or r["user_id"] or "", r["name"] or "",
                      ", ".join(r["tags"]), orjson.dumps(r["attributes"]).decode(), "yes" if r["opted_out"] else "")
    return table


def _stream(conn: psycopg.Connection, open_sql: str, cursor: str, params: dict, out: IO[str],
            first: str = "", separator: str = "\n", last: str = "\n") -> int:
    """FETCH the cursor the function opens a slice at a time into ``out``; the lines written."""
    written = 0
    with conn.transaction():
        conn.execute(open_sql, params)
        out.write(first)
        while rows := conn.execute(FETCH[cursor]).fetchall():
            out.write(("" if written == 0 else separator) + separator.join(r[0] for r in rows))
            written += len(rows)
        out.write(last)
    return written


def _open_out(path: str | None) -> IO[str]:
    return open(path, "w", encoding="utf-8", newline="") if path and path != "-" else sys.stdout


def _audience(args: argparse.Namespace) -> dict[str, Any]:
    return {"id": getattr(args, "id", None), "filter": _json(args.filter, "--filter"),
            "tags": [t.strip() for t in args.tags.split(",")] if args.tags else None}


def cmd_contact(args: argparse.Namespace, console: Console) -> int:
    with connect() as conn:
        tenant = tenant_id(conn, args.tenant)
        base = {"tenant_id": tenant}
        if args.action == "list":
            rows = _dicts(conn, SEARCH, {**base, "phone": args.phone, "name": args.name, "tag": args.tag,
                                         "filter": _json(args.filter, "--filter"), "before_id": args.before,
                                         "limit": args.limit})
            console.print(_contacts_table(rows, f"Contacts of tenant {tenant}"))
        elif args.action in ("show", "edit"):
            if args.action == "edit":
                row = _dicts(conn, UPDATE, {**base, "id": args.id, "name": args.name,
                                            "fields": _field_values(args.field, args.unset),
                                            "add": args.tag or None, "remove": args.untag or None})[0]
            else:
                row = _dicts(conn, CONTACT, {**base, "id": args.id})[0]
            console.print(_contacts_table([row], f"Contact {args.id}"))
        elif args.action == "delete":
            erased = _dicts(conn, DELETE, {**base, "id": args.id})[0]
            console.print(f"erased contact {args.id}: {erased['outbound_messages']} outbound messages "
                          f"({erased['withdrawn']} withdrawn from queues), {erased['inbox_messages']} inbox messages, "
                          f"{erased['conversations']} conversations, {erased['status_events']} status events")
        elif args.action == "export":
            out = _open_out(args.out)
            try:
                n = _stream(conn, OPEN_EXPORT, "export", {**base, "id": args.segment,
                                                          "filter": _json(args.filter, "--filter")}, out)
            finally:
                if out is not sys.stdout:
                    out.close()
            if out is not sys.stdout:
                console.print(f"{n - 1} contacts written to {args.out}")
        elif args.action == "field":
            if args.field_action == "define":
                _dicts(conn, DEFINE_FIELD, {**base, "name": args.name, "type": args.type})
            elif args.field_action == "delete":
                _value(conn, DELETE_FIELD, {**base, "name": args.name})
            table = Table(title=f"Contact fields of tenant {tenant}")
            table.add_column("name")
            table.add_column("type")
            for r in _dicts(conn, FIELDS, base):
                table.add_row(r["name"], r["type"])
            console.print(table)
    return 0


def cmd_segment(args: argparse.Namespace, console: Console) -> int:
    with connect() as conn:
        tenant = tenant_id(conn, args.tenant)
        base = {"tenant_id": tenant}
        if args.action == "list":
            table = Table(title=f"Segments of tenant {tenant}")
            for column in ("id", "name", "filter", "count now"):
                table.add_column(column)
            for r in _dicts(conn, SEGMENTS, base):
                n = _value(conn, COUNT, {**base, "id": r["segment_id"], "filter": None, "tags": None})
                table.add_row(str(r["segment_id"]), r["name"], orjson.dumps(r["filter"]).decode(), f"{n:,}")
            console.print(table)
        elif args.action == "save":
            row = _dicts(conn, SAVE_SEGMENT, {**base, "name": args.name, "filter": _json(args.filter_json, "FILTER"),
                                              "id": args.id})[0]
            console.print(f"segment {row['segment_id']} {row['name']!r} saved")
        elif args.action == "delete":
            _value(conn, DELETE_SEGMENT, {**base, "id": args.id})
            console.print(f"segment {args.id} deleted")
        elif args.action == "count":
            console.print(f"{_value(conn, COUNT, {**base, **_audience(args)}):,}")
        elif args.action == "campaign":
            number = number_id(conn, tenant, args.number)
            created = _dicts(conn, FROM_SEGMENT, {
                **base, **_audience(args), "number_id": number, "name": args.name or "segment campaign",
                "templates": orjson.dumps([parse_template(t) for t in args.template]).decode(),
                "scheduled_at": args.schedule, "start": args.start, "on_invalid": args.on_invalid})[0]
            _created(console, created)
    return 0


def _created(console: Console, created: dict) -> None:
    console.print(f"campaign {created['campaign_id']} {created['status']}: {created['total']:,} messages "
                  f"({created['skipped_opted_out']:,} opted out, {created['skipped_invalid']:,} without a mapped "
                  f"value, {created['duplicates_removed']:,} duplicates)")


def cmd_campaign_retarget(args: argparse.Namespace, console: Console) -> int:
    with connect() as conn:
        tenant = tenant_id(conn, args.tenant)
        templates = orjson.dumps([parse_template(t) for t in args.template]).decode() if args.template else None
        created = _dicts(conn, RETARGET, {"tenant_id": tenant, "id": args.id, "who": args.who, "name": args.name,
                                          "templates": templates, "scheduled_at": args.schedule,
                                          "start": args.start, "on_invalid": args.on_invalid})[0]
    _created(console, created)
    return 0


def cmd_campaign_report(args: argparse.Namespace, console: Console) -> int:
    with connect() as conn:
        tenant = tenant_id(conn, args.tenant)
        out = _open_out(args.out)
        try:
            params = {"tenant_id": tenant, "id": args.id, "format": args.format}
            if args.format == "json":
                _stream(conn, OPEN_REPORT, "report", params, out, "[", ",\n", "]\n")
            else:
                _stream(conn, OPEN_REPORT, "report", params, out)
        finally:
            if out is not sys.stdout:
                out.close()
    return 0


def add_parsers(sub: argparse._SubParsersAction, campaign: argparse._SubParsersAction,
                campaign_command: Callable[..., argparse.ArgumentParser]) -> None:
    """``pgwa contact ...``, ``pgwa segment ...``, ``pgwa campaign retarget|report``."""
    contact = sub.add_parser("contact", help="contacts: search, edit, erase, export, fields"
                             ).add_subparsers(dest="action", required=True)
    cl = contact.add_parser("list", help="search contacts, newest first")
    cl.add_argument("--phone")
    cl.add_argument("--name", help="a part of the name")
    cl.add_argument("--tag")
    cl.add_argument("--filter", help="a segment filter (JSON)")
    cl.add_argument("--before", type=int, help="keyset: contacts older than this id")
    cl.add_argument("--limit", type=int, default=50)
    cs = contact.add_parser("show", help="one contact")
    cs.add_argument("id", type=int)
    ce = contact.add_parser("edit", help="name, field values, tags")
    ce.add_argument("id", type=int)
    ce.add_argument("--name")
    ce.add_argument("--field", action="append", default=[], metavar="NAME=VALUE")
    ce.add_argument("--unset", action="append", default=[], metavar="NAME")
    ce.add_argument("--tag", action="append", default=[])
    ce.add_argument("--untag", action="append", default=[])
    cd = contact.add_parser("delete", help="erase a contact, its messages, events and conversations")
    cd.add_argument("id", type=int)
    cx = contact.add_parser("export", help="CSV of contacts (all, a segment's or a filter's), streamed")
    cx.add_argument("--segment", type=int)
    cx.add_argument("--filter")
    cx.add_argument("--out", help="a file (default: stdout)")
    cf = contact.add_parser("field", help="custom fields").add_subparsers(dest="field_action", required=True)
    fl = cf.add_parser("list")
    fd = cf.add_parser("define")
    fd.add_argument("name")
    fd.add_argument("type", choices=["text", "number", "date", "boolean"])
    fx = cf.add_parser("delete")
    fx.add_argument("name")
    for command in (cl, cs, ce, cd, cx, fl, fd, fx):
        command.add_argument("--tenant")
        command.set_defaults(run=cmd_contact, action=command.prog.split()[2])

    segment = sub.add_parser("segment", help="saved filters over contacts").add_subparsers(dest="action", required=True)
    sl = segment.add_parser("list", help="segments with their live counts")
    ss = segment.add_parser("save", help="save (or with --id replace) a segment")
    ss.add_argument("name")
    ss.add_argument("filter_json", metavar="FILTER", help='e.g. \'{"all": [{"tag": "vip"}, {"opted_out": false}]}\'')
    ss.add_argument("--id", type=int)
    sd = segment.add_parser("delete")
    sd.add_argument("id", type=int)
    sc = segment.add_parser("count", help="how many contacts a segment, filter or tags match now")
    sg = segment.add_parser("campaign", help="a campaign for a segment, filter or tags, atomically")
    for command in (sc, sg):
        command.add_argument("id", type=int, nargs="?")
        command.add_argument("--filter")
        command.add_argument("--tags", help="comma-separated: contacts with any of them")
    sg.add_argument("--number", required=True)
    sg.add_argument("--template", action="append", required=True, metavar="NAME:LANG[:PARAM,...]")
    sg.add_argument("--name")
    sg.add_argument("--start", action="store_true")
    sg.add_argument("--schedule", metavar="TIMESTAMP")
    sg.add_argument("--on-invalid", choices=["reject", "skip"], default="skip")
    for command in (sl, ss, sd, sc, sg):
        command.add_argument("--tenant")
        command.set_defaults(run=cmd_segment)

    rt = campaign_command(campaign, "retarget", cmd_campaign_retarget,
                          help="a new campaign for the recipients who failed / were not delivered / not read / "
                               "did not reply")
    rt.add_argument("who", choices=["failed", "not_delivered", "not_read", "not_replied"])
    rt.add_argument("--template", action="append", metavar="NAME:LANG[:PARAM,...]",
                    help="default: the campaign's templates and mapping")
    rt.add_argument("--name")
    rt.add_argument("--start", action="store_true")
    rt.add_argument("--schedule", metavar="TIMESTAMP")
    rt.add_argument("--on-invalid", choices=["reject", "skip"], default="skip")
    rp = campaign_command(campaign, "report", cmd_campaign_report,
                          help="every recipient's final state, times and error (streamed)")
    rp.add_argument("--format", choices=["csv", "json"], default="csv")
    rp.add_argument("--out", help="a file (default: stdout)")
