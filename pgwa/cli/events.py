"""``pgwa endpoint`` and ``pgwa event``: a tenant's outbound-event endpoints and deliveries.

::

    pgwa endpoint add URL --tenant T --events message.status,contact.opted_out [--description D]
                          [--secret-env VAR]          (the secret is printed once, on stdout)
    pgwa endpoint list --tenant T  |  endpoint remove ID --tenant T
    pgwa event list --tenant T [--endpoint ID] [--status pending|delivered|dead] [--limit N]
    pgwa event replay ID --tenant T [--endpoint ID]

The named queries of pgwa/queries.sql, as every other command; the worker delivers.
"""

from __future__ import annotations

import argparse
import os

from rich.console import Console
from rich.table import Table

from pgwa.cli.commands import CliError, _dicts, _value, connect, tenant_id
from pgwa.cli.views import when
from pgwa.queries import queries


def add_parsers(sub: argparse._SubParsersAction) -> None:
    endpoint = sub.add_parser("endpoint", help="endpoints that receive the tenant's outbound events"
                              ).add_subparsers(dest="action", required=True)
    add = endpoint.add_parser("add", help="register an endpoint; its signing secret is shown once")
    add.add_argument("url")
    add.add_argument("--tenant")
    add.add_argument("--events", required=True, metavar="TYPE,...",
                     help="message.status, message.inbound, campaign.completed, campaign.paused, "
                          "contact.opted_out, contact.opted_in, template.status")
    add.add_argument("--description")
    add.add_argument("--secret-env", metavar="VAR", help="the variable holding a secret of your own "
                                                        "(default: one is made)")
    add.set_defaults(run=cmd_endpoint)
    for action in ("list", "remove"):
        e = endpoint.add_parser(action)
        e.add_argument("--tenant")
        if action == "remove":
            e.add_argument("id", type=int)
        e.set_defaults(run=cmd_endpoint)

    event = sub.add_parser("event", help="the tenant's outbound events and their deliveries"
                           ).add_subparsers(dest="action", required=True)
    ls = event.add_parser("list", help="newest first, one row an event and endpoint")
    ls.add_argument("--tenant")
    ls.add_argument("--endpoint", type=int)
    ls.add_argument("--status", choices=("pending", "delivered", "dead"))
    ls.add_argument("--before", type=int, help="keyset: events older than this id")
    ls.add_argument("--limit", type=int, default=50)
    ls.set_defaults(run=cmd_event)
    rp = event.add_parser("replay", help="deliver an event again (the same id and body)")
    rp.add_argument("id", type=int)
    rp.add_argument("--tenant")
    rp.add_argument("--endpoint", type=int, help="only to this endpoint")
    rp.set_defaults(run=cmd_event)


def cmd_endpoint(args: argparse.Namespace, console: Console) -> int:
    with connect() as conn:
        tenant = tenant_id(conn, args.tenant)
        if args.action == "add":
            secret = None
            if args.secret_env:
                secret = os.environ.get(args.secret_env)
                if not secret:
                    raise CliError(f"{args.secret_env} is not set")
            types = [t.strip() for t in args.events.split(",") if t.strip()]
            [created] = _dicts(conn, queries["create_event_endpoint"], {
                "tenant_id": tenant, "url": args.url, "event_types": types, "secret": secret,
                "description": args.description})
            Console(stderr=True).print(f"endpoint {created['endpoint_id']} for tenant {tenant}: {created['url']} "
                                       f"({', '.join(created['event_types'])}); signing secret, shown once:",
                                       highlight=False)
            print(created["secret"])
        elif args.action == "remove":
            _value(conn, queries["delete_event_endpoint"], {"tenant_id": tenant, "endpoint_id": args.id})
            console.print(f"endpoint {args.id} removed")
        else:
            console.print(endpoints_table(_dicts(conn, queries["event_endpoints"], {"tenant_id": tenant}), tenant))
    return 0


def cmd_event(args: argparse.Namespace, console: Console) -> int:
    with connect() as conn:
        tenant = tenant_id(conn, args.tenant)
        if args.action == "replay":
            n = _value(conn, queries["replay_event"], {"tenant_id": tenant, "event_id": args.id,
                                                       "endpoint_id": args.endpoint})
            console.print(f"event {args.id}: {n} deliver{'y' if n == 1 else 'ies'} queued again"
                          + ("" if n else " (pending ones are queued already)"))
        else:
            rows = _dicts(conn, queries["outbound_events"], {
                "tenant_id": tenant, "endpoint_id": args.endpoint, "status": args.status,
                "before_id": args.before, "limit": args.limit})
            console.print(events_table(rows, tenant))
    return 0


def endpoints_table(rows: list[dict], tenant: int) -> Table:
    table = Table(title=f"Event endpoints of tenant {tenant}")
    for column in ("id", "url", "events", "pending", "failures", "retry at", "created"):
        table.add_column(column, justify="right" if column in ("id", "pending", "failures") else "left")
    for e in rows:
        table.add_row(str(e["endpoint_id"]), e["url"], ", ".join(e["event_types"]), f"{e['pending']:,}",
                      str(e["failures"]), when(e["retry_at"]), when(e["created_at"]))
    return table


def events_table(rows: list[dict], tenant: int) -> Table:
    table = Table(title=f"Outbound events of tenant {tenant}")
    for column in ("id", "type", "endpoint", "status", "attempts", "last HTTP", "last error", "next attempt",
                   "created"):
        table.add_column(column, justify="right" if column in ("id", "endpoint", "attempts") else "left")
    for e in rows:
        table.add_row(str(e["event_id"]), e["event_type"], str(e["endpoint_id"]), e["status"], str(e["attempts"]),
                      str(e["last_http_status"] or ""), (e["last_error"] or "")[:60], when(e["next_attempt_at"]),
                      when(e["created_at"]))
    return table
