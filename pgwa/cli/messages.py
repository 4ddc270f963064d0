"""``pgwa send`` and ``pgwa message show``: one message from the command line, and its history.

::

    pgwa send --tenant T --number N --to +15551234567 --template order_update [--language en_US]
              [--param VALUE ...] [--named NAME=VALUE ...] [--header TEXT|URL] [--header-media ID]
              [--button INDEX=VALUE ...] [--idempotency-key K]
    pgwa send --tenant T --number N --to +15551234567 --text "Your parcel left"   (inside the window)
    pgwa message show ID --tenant T

The same api.send_message as POST /v1/messages (a template with all its parameters at any
time, a text only inside the contact's 24-hour window); an idempotency key makes a rerun
answer the first message instead of sending another.
"""

from __future__ import annotations

import argparse

import orjson
from rich.console import Console
from rich.table import Table

from pgwa.cli.commands import CliError, _dicts, _value, connect, number_id, tenant_id
from pgwa.cli.views import when
from pgwa.queries import queries


def add_parsers(sub: argparse._SubParsersAction) -> None:
    send = sub.add_parser("send", help="send one template (or a text inside the 24-hour window) to one phone")
    send.add_argument("--tenant")
    send.add_argument("--number", required=True, help="number_id or Meta's phone_number_id")
    send.add_argument("--to", required=True, help="a phone with its country code, or a business-scoped user id")
    what = send.add_mutually_exclusive_group(required=True)
    what.add_argument("--template", metavar="NAME")
    what.add_argument("--text")
    send.add_argument("--language", default="en_US")
    send.add_argument("--param", action="append", default=[], metavar="VALUE",
                      help="a positional body parameter, {{1}} first (repeat)")
    send.add_argument("--named", action="append", default=[], metavar="NAME=VALUE",
                      help="a named body parameter (repeat)")
    send.add_argument("--header", metavar="TEXT|URL", help="the header's text, or its media link")
    send.add_argument("--header-media", type=int, metavar="ID", help="the header's file, uploaded with pgwa media upload")
    send.add_argument("--button", action="append", default=[], metavar="INDEX=VALUE",
                      help="a button's parameter (URL suffix, copy code, payload) by 0-based index (repeat)")
    send.add_argument("--idempotency-key", metavar="KEY", help="a rerun with the same key sends nothing new")
    send.set_defaults(run=cmd_send)

    message = sub.add_parser("message", help="outbound messages").add_subparsers(dest="action", required=True)
    show = message.add_parser("show", help="one outbound message with its status history")
    show.add_argument("id", type=int)
    show.add_argument("--tenant")
    show.set_defaults(run=cmd_message)


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or not name:
            raise CliError(f"{flag} takes NAME=VALUE, not {value!r}")
        pairs[name] = text
    return pairs


def template_message(args: argparse.Namespace) -> dict:
    """The api.send_message template message the flags describe."""
    if args.param and args.named:
        raise CliError("give --param (positional) or --named (named parameters), not both")
    message: dict = {"type": "template", "name": args.template, "language": args.language}
    if args.header_media is not None:
        message["header"] = {"media": args.header_media}
    elif args.header is not None:
        message["header"] = {"link": args.header} if args.header.startswith(("http://", "https://")) else args.header
    if args.param:
        message["body"] = args.param
    elif args.named:
        message["body"] = _pairs(args.named, "--named")
    if args.button:
        message["buttons"] = _pairs(args.button, "--button")
    return message


def cmd_send(args: argparse.Namespace, console: Console) -> int:
    if args.text is not None and (args.param or args.named or args.header or args.header_media or args.button):
        raise CliError("--param, --named, --header and --button go with --template")
    message = template_message(args) if args.template else {"type": "text", "text": args.text}
    with connect() as conn:
        tenant = tenant_id(conn, args.tenant)
        [sent] = _dicts(conn, queries["send_message"], {
            "tenant_id": tenant, "number_id": number_id(conn, tenant, args.number), "to": args.to,
            "message": orjson.dumps(message).decode(), "idempotency_key": args.idempotency_key})
    console.print(sent_table(sent))
    return 0


def cmd_message(args: argparse.Namespace, console: Console) -> int:
    with connect() as conn:
        tenant = tenant_id(conn, args.tenant)
        message = _value(conn, queries["message"], {"tenant_id": tenant, "outbound_id": args.id})
    console.print(message_table(message))
    console.print(history_table(message))
    return 0


def sent_table(sent: dict) -> Table:
    table = Table(title="Already sent with this idempotency key" if sent["replayed"] else "Queued")
    for column in ("id", "to", "number", "contact", "state", "window closes", "queued"):
        table.add_column(column, justify="right" if column in ("id", "number", "contact") else "left")
    table.add_row(str(sent["outbound_id"]), sent["recipient"], str(sent["number_id"]), str(sent["contact_id"]),
                  sent["state"], when(sent["window_closes_at"]), when(sent["queued_at"]))
    return table


def message_table(m: dict) -> Table:
    table = Table(title=f"Message {m['outbound_id']}", show_header=False)
    table.add_column("field")
    table.add_column("value")
    error = m.get("error") or {}
    for field, value in (("to", m["recipient"]), ("kind", m["kind"]), ("state", m["state"]),
                         ("number", m["number_id"]), ("campaign", m["campaign_id"]), ("wamid", m["wamid"]),
                         ("attempts", m["attempts"]), ("idempotency key", m["idempotency_key"]),
                         ("error", " ".join(str(error[k]) for k in ("code", "title", "detail") if error.get(k)))):
        table.add_row(field, "" if value is None else str(value))
    return table


def history_table(m: dict) -> Table:
    table = Table(title="History")
    table.add_column("state")
    table.add_column("at")
    for h in m["history"]:
        table.add_row(h["state"], h["at"][:19].replace("T", " "))
    return table
