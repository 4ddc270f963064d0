"""``pgwa``: the operator's command line. It talks to PostgreSQL (DATABASE_URL, or the
project's local cluster) through the same ``api`` functions every client uses, with the
named queries of pgwa/queries.sql.

::

    pgwa db up | migrate | psql | url
    pgwa serve api | worker | sim [ARGS...]
    pgwa tenant create NAME
    pgwa number register --tenant T --phone-number-id ID --waba-id ID  (token in WHATSAPP_ACCESS_TOKEN)
    pgwa number transfer PHONE_NUMBER_ID --to T [--waba-id ID]       (operator only)
    pgwa portfolio list --tenant T  |  portfolio set-tier NUMBER TIER --tenant T [--business-id ID]
    pgwa key create --tenant T [--name N] [--scope read|send|admin] [--expires WHEN] [--rate-limit N]
    pgwa key list --tenant T  |  key revoke ID --tenant T
    pgwa campaign create --csv FILE --tenant T --number N --template name:lang[:param,...] ... [--start]
    pgwa campaign start|pause|resume|cancel ID --tenant T
    pgwa campaign watch ID --tenant T
    pgwa campaigns --tenant T [--status S] [--limit N]
    pgwa stats ID --tenant T
    pgwa reconcile ID --tenant T [--fix]
    pgwa endpoint add URL --tenant T --events TYPE,... | endpoint list | endpoint remove ID
    pgwa event list --tenant T [--endpoint ID] [--status S]  |  event replay ID --tenant T
    pgwa template list|sync|show ID|delete ID [--force]|create FILE (--waba-id W | --number N) --tenant T
    pgwa contact list|show|edit|delete|export|field ...  |  segment list|save|count|campaign|delete ...
    pgwa campaign retarget ID failed|not_delivered|not_read|not_replied --tenant T  (pgwa/cli/audiences.py)
    pgwa campaign report ID --tenant T [--format csv|json] [--out FILE]
    pgwa media upload FILE --tenant T --number N [--mime M]  |  media list --tenant T [--number N]
    pgwa user add --tenant T --email E [--role R]  |  user invite|list ...  (pgwa/cli/users.py)
    pgwa send --tenant T --number N --to PHONE (--template NAME [--param V ...] | --text T) [--idempotency-key K]
    pgwa message show ID --tenant T                                              (pgwa/cli/messages.py)

A tenant is given by id or by name (or PGWA_TENANT); a number by its number_id or Meta's
phone_number_id. A template parameter is a CSV column name, or ``=text`` for a constant:
``--template order_update:en_US:name,order_no,=ACME``. Errors print the SQLSTATE, the
message and the hint, and exit 1.

This module holds the parser and ``main``; ``commands`` the commands, ``views`` what they print.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import psycopg
from rich.console import Console

from pgwa.cli.audiences import add_parsers as add_audience_parsers
from pgwa.cli.commands import (
    CliError,
    cmd_campaign_action,
    cmd_campaign_create,
    cmd_campaign_watch,
    cmd_campaigns,
    cmd_db,
    cmd_key,
    cmd_media,
    cmd_number,
    cmd_portfolio,
    cmd_reconcile,
    cmd_serve,
    cmd_stats,
    cmd_template,
    cmd_tenant,
    expiry,
    parse_template,
)
from pgwa.cli.events import add_parsers as add_event_parsers
from pgwa.cli.messages import add_parsers as add_message_parsers
from pgwa.cli.users import add_parsers as add_user_parsers

__all__ = ["CliError", "main", "parse_template", "parser"]


def _campaign_command(sub: argparse._SubParsersAction, name: str, run: Callable, **kwargs: str
                      ) -> argparse.ArgumentParser:
    """A command on one campaign: ``NAME ID [--tenant T]``."""
    command = sub.add_parser(name, **kwargs)
    command.add_argument("id", type=int)
    command.add_argument("--tenant")
    command.set_defaults(run=run)
    return command


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

    portfolio = sub.add_parser("portfolio", help="business portfolios and their messaging limits"
                               ).add_subparsers(dest="action", required=True)
    pl = portfolio.add_parser("list", help="tier, limit, users messaged in 24 h, waiting until, numbers")
    pl.add_argument("--tenant")
    pl.set_defaults(run=cmd_portfolio)
    ps = portfolio.add_parser("set-tier", help="set the messaging-limit tier of a number's portfolio")
    ps.add_argument("number", help="number_id or Meta's phone_number_id")
    ps.add_argument("tier", help="as Meta names it: TIER_50, TIER_250, TIER_1K, TIER_2K, TIER_10K, TIER_100K "
                                 "or TIER_UNLIMITED")
    ps.add_argument("--tenant")
    ps.add_argument("--business-id", metavar="ID",
                    help="Meta's business portfolio id: move the number's WABA into it (WABAs with one id "
                         "share one limit)")
    ps.set_defaults(run=cmd_portfolio)

    key = sub.add_parser("key", help="API keys").add_subparsers(dest="action", required=True)
    for action in ("create", "list", "revoke"):
        k = key.add_parser(action)
        k.add_argument("--tenant")
        if action == "create":
            k.add_argument("--name", default="api")
            k.add_argument("--scope", choices=("read", "send", "admin"), default="admin",
                           help="read: GET routes; send: also campaigns, contacts, inbox; admin: everything "
                                "(default)")
            k.add_argument("--expires", type=expiry, metavar="WHEN",
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
                   help="repeat for an A/B split; PARAM is a CSV column or =constant; or a JSON "
                        "mapping with header/body/buttons, e.g. '{\"name\": \"spring_sale\", \"language\": "
                        "\"en_US\", \"header\": {\"column\": \"photo\"}, ...}' (what a template needs: api.template_parameters)")
    c.add_argument("--name")
    c.add_argument("--start", action="store_true", help="start sending at once")
    c.add_argument("--schedule", metavar="TIMESTAMP", help="start at this time (ISO 8601)")
    c.add_argument("--on-invalid", choices=["reject", "skip"], default="reject")
    c.add_argument("--default-country-code", metavar="CC")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(run=cmd_campaign_create)
    for action in ("start", "pause", "resume", "cancel"):
        _campaign_command(campaign, action, cmd_campaign_action)
    w = _campaign_command(campaign, "watch", cmd_campaign_watch,
                          help="live progress until the campaign finishes (Ctrl-C to stop)")
    w.add_argument("--interval", type=float, default=1.0)
    w.add_argument("--once", action="store_true", help="show once and exit")
    add_audience_parsers(sub, campaign, _campaign_command)   # contact, segment, campaign retarget|report

    cs = sub.add_parser("campaigns", help="list campaigns with live counters")
    cs.add_argument("--tenant")
    cs.add_argument("--status")
    cs.add_argument("--before", type=int, help="keyset: campaigns older than this id")
    cs.add_argument("--limit", type=int, default=50)
    cs.set_defaults(run=cmd_campaigns)

    media = sub.add_parser("media", help="media files").add_subparsers(dest="action", required=True)
    mu = media.add_parser("upload", help="upload a file to Meta for a number (reused while the same bytes are valid)")
    mu.add_argument("file")
    mu.add_argument("--tenant")
    mu.add_argument("--number", required=True, help="number_id or Meta's phone_number_id")
    mu.add_argument("--mime", help="the MIME type (default: from the file name)")
    mu.set_defaults(run=cmd_media)
    ml = media.add_parser("list", help="the tenant's media: uploads and files contacts sent")
    ml.add_argument("--tenant")
    ml.add_argument("--number", help="number_id or Meta's phone_number_id")
    ml.add_argument("--direction", choices=["in", "out"])
    ml.add_argument("--limit", type=int, default=50)
    ml.set_defaults(run=cmd_media)

    template = sub.add_parser("template", help="message templates at Meta").add_subparsers(dest="action",
                                                                                          required=True)
    tl = template.add_parser("list", help="the tenant's templates")
    tl.add_argument("--waba-id")
    tl.add_argument("--status", help="e.g. APPROVED, PENDING, REJECTED, PAUSED")
    ts = template.add_parser("show", help="one template: components, the parameters a send needs, campaigns")
    ts.add_argument("id", type=int)
    tc = template.add_parser("create", help="submit a definition (Meta's JSON: name, language, category, "
                                            "components with examples) for Meta's review")
    tc.add_argument("file", help="a JSON file, or - for stdin")
    where = tc.add_mutually_exclusive_group(required=True)
    where.add_argument("--waba-id")
    where.add_argument("--number", help="number_id or Meta's phone_number_id of a number of the WABA")
    td = template.add_parser("delete", help="delete this language of the template at Meta")
    td.add_argument("id", type=int)
    td.add_argument("--force", action="store_true", help="even while campaigns send it (they are paused)")
    ty = template.add_parser("sync", help="store every template of the number's WABA as Meta lists it")
    ty.add_argument("--number", required=True, help="number_id or Meta's phone_number_id")
    for command in (tl, ts, tc, td, ty):
        command.add_argument("--tenant")
        command.set_defaults(run=cmd_template)

    _campaign_command(sub, "stats", cmd_stats, help="a campaign's funnel, templates and errors")
    rc = _campaign_command(sub, "reconcile", cmd_reconcile, help="recount a campaign's counters from its messages")
    rc.add_argument("--fix", action="store_true", help="set drifting counters to the recount")
    rc.add_argument("--all", action="store_true", help="show every counter, not only drifting ones")
    add_event_parsers(sub)    # pgwa endpoint ..., pgwa event ... (pgwa/cli/events.py)
    add_user_parsers(sub)     # pgwa user add|invite|list (pgwa/cli/users.py)
    add_message_parsers(sub)  # pgwa send, pgwa message show (pgwa/cli/messages.py)
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
