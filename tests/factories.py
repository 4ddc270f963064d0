"""Build state through the api functions, as a client would: a tenant and its number,
templates, a staged contact CSV, a campaign; and the worker's two calls, claim and report.

Tests of the send path call `claim` after `catch_up`, which moves every number's pace
(send_tat) to now, as if time had passed; the pacing tests call it bare. `claim`, `report`
and `catch_up` take the time (`now`, default the database's clock): tests of timing pass
it, as a fake clock, and assert on the state it leaves (send_tat, vt), never on a race.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from pgwa.contacts import csv_text, stage_csv
from pgwa.queries import queries

ORDER_UPDATE = [{"type": "BODY", "text": "Hi {{1}}, your order {{2}} from {{3}} is on its way."}]
PROMO = [{"type": "BODY", "text": "Hello {{1}}, 10% off this week."}]
NO_PARAMS = [{"type": "BODY", "text": "Your appointment is confirmed."}]

_ids = itertools.count(1)


@dataclass(frozen=True)
class Account:
    """A tenant with one registered WhatsApp number."""

    tenant_id: int
    number_id: int
    phone_number_id: str
    waba_id: str
    access_token: str


def account(db: psycopg.Connection, throughput_mps: int = 1000, with_templates: bool = True) -> Account:
    """A tenant, a number at `throughput_mps` and (by default) the approved templates
    order_update (3 body parameters), promo (1) and confirmed (none), all en_US."""
    n = next(_ids)
    tenant_id = db.execute(queries["create_tenant"], {"name": f"tenant {n}"}).fetchone()[0]
    phone_number_id, waba_id, token = f"10{n:04d}", f"20{n:04d}", f"token-{n}"
    # As the operator: no app secret, and no Graph API answer to register with.
    number_id = db.execute(queries["register_number"], {
        "tenant_id": tenant_id, "phone_number_id": phone_number_id, "waba_id": waba_id, "access_token": token,
        "app_secret": None, "throughput_mps": throughput_mps, "display_phone_number": None,
        "verified": None}).fetchone()[0]
    acc = Account(tenant_id, number_id, phone_number_id, waba_id, token)
    if with_templates:
        template(db, acc, "order_update", ORDER_UPDATE)
        template(db, acc, "promo", PROMO)
        template(db, acc, "confirmed", NO_PARAMS)
    return acc


def another_number(db: psycopg.Connection, acc: Account, waba_id: str, phone_number_id: str) -> int:
    """Another number of the account's tenant, in WABA `waba_id`, with the account's token."""
    return db.execute(queries["register_number"], {
        "tenant_id": acc.tenant_id, "phone_number_id": phone_number_id, "waba_id": waba_id,
        "access_token": acc.access_token, "app_secret": None, "throughput_mps": 1000,
        "display_phone_number": None, "verified": None}).fetchone()[0]


def template(db: psycopg.Connection, acc: Account, name: str, components: list[dict],
             status: str = "APPROVED", language: str = "en_US") -> int:
    return db.execute(queries["upsert_template"], {
        "tenant_id": acc.tenant_id, "waba_id": acc.waba_id, "name": name, "language": language,
        "components": orjson.dumps(components).decode(), "status": status, "category": None,
        "meta_template_id": None}).fetchone()[0]


def phones(n: int, base: int = 0) -> list[str]:
    """n distinct valid E.164 numbers (digits, no '+')."""
    return [f"1415{base + i:07d}" for i in range(n)]


def contacts(n: int, base: int = 0) -> list[dict[str, str]]:
    """n CSV rows with the columns the order_update template maps."""
    return [{"phone": p, "name": f"Name {base + i}", "order_no": f"A-{base + i}"}
            for i, p in enumerate(phones(n, base))]


def stage(db: psycopg.Connection, rows: list[dict[str, Any]]) -> int:
    """Stage a CSV of these rows (header from the first row's keys) on this connection."""
    return stage_csv(db, csv_text(rows))


def order_update(shop: str = "ACME") -> dict:
    return {"name": "order_update", "language": "en_US",
            "params": [{"column": "name"}, {"column": "order_no"}, {"value": shop}]}


def promo() -> dict:
    return {"name": "promo", "language": "en_US", "params": [{"column": "name"}]}


def create_campaign(db: psycopg.Connection, acc: Account, rows: list[dict[str, Any]] | int,
                    templates: list[dict] | None = None, *, on_invalid: str = "reject",
                    start: bool = False, scheduled_at: Any = None, default_country_code: str | None = None,
                    name: str | None = None) -> dict[str, Any]:
    """Stage `rows` (or that many generated contacts) and create a campaign from them;
    returns api.create_campaign's row as a dict."""
    stage(db, contacts(rows) if isinstance(rows, int) else rows)
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute(queries["create_campaign"], {
            "tenant_id": acc.tenant_id, "number_id": acc.number_id, "name": name or f"campaign {next(_ids)}",
            "templates": orjson.dumps(templates or [order_update()]).decode(), "on_invalid": on_invalid,
            "scheduled_at": scheduled_at, "start": start, "default_country_code": default_country_code}).fetchone()


def running_campaign(db: psycopg.Connection, acc: Account, rows: list[dict[str, Any]] | int,
                     templates: list[dict] | None = None) -> int:
    return create_campaign(db, acc, rows, templates, start=True)["campaign_id"]


def catch_up(db: psycopg.Connection, now: Any = None) -> None:
    """Every number's pace caught up with `now` (default the clock), as if time had passed
    since its last claim."""
    db.execute("UPDATE core.wa_numbers SET send_tat = coalesce(%s::timestamptz, now()) - interval '1 second'",
               (now,))


def expire_claims(db: psycopg.Connection, campaign_id: int) -> None:
    """As if the claim timeout had passed, with the webhook receiver up all along and no
    status come: every message of the campaign's queue is visible, and those in flight
    were claimed long enough ago for a resend (core.resend_safe)."""
    db.execute(sql.SQL("UPDATE pgmq.{} SET vt = now() - interval '1 second'")
               .format(sql.Identifier("q_" + campaign_queue(db, campaign_id))))
    db.execute("UPDATE core.outbound_messages SET claimed_at = claimed_at - interval '1 day' "
               "WHERE campaign_id = %s AND state = 'in_flight'", (campaign_id,))
    receiver_up(db)


def receiver_up(db: psycopg.Connection, now: Any = None) -> None:
    """The webhook receiver beats (api.receiver_heartbeat), as the API process does."""
    db.execute("SELECT api.receiver_heartbeat(%s)", (now,))


@contextlib.contextmanager
def receiver_beating(db_url: str, every_s: float = 0.5) -> Iterator[None]:
    """For tests that run a worker without the API process: a thread beats for the
    receiver, so that sends whose answer was lost may go again once their grace passes."""
    stop = threading.Event()

    def beat() -> None:
        with psycopg.connect(db_url, autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("SELECT api.receiver_heartbeat()")
                stop.wait(every_s)

    thread = threading.Thread(target=beat, name="receiver-beat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def claim(db: psycopg.Connection, max_rows: int = 500, worker: str = "test", now: Any = None) -> list[dict[str, Any]]:
    """api.claim_sends at `now` (default the clock)."""
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM api.claim_sends(%s, %s, %s)", (worker, max_rows, now)).fetchall()


def claim_all(db: psycopg.Connection, max_rows: int = 500, now: Any = None) -> list[dict[str, Any]]:
    catch_up(db, now)
    return claim(db, max_rows, now=now)


def ok(req: dict[str, Any], wamid: str | None = None) -> dict[str, Any]:
    """The worker's result for a request Meta accepted."""
    return {"outbound_id": req["outbound_id"], "queue_name": req["queue_name"], "msg_id": req["msg_id"],
            "wamid": wamid or f"wamid.{req['outbound_id']}", "message_status": "accepted",
            "error_code": None, "http_status": 200, "error_message": None}


def err(req: dict[str, Any], code: int | None, http_status: int = 400) -> dict[str, Any]:
    """The worker's result for a request Meta refused with error.code `code` (None: no answer)."""
    return {"outbound_id": req["outbound_id"], "queue_name": req["queue_name"], "msg_id": req["msg_id"],
            "wamid": None, "message_status": None, "error_code": code,
            "http_status": http_status if code is not None else None,
            "error_message": f"error {code}" if code is not None else "connection reset"}


def report(db: psycopg.Connection, results: list[dict[str, Any]], now: Any = None) -> dict[str, int]:
    """api.report_sends at `now` (default the clock)."""
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM api.report_sends(%s::jsonb, %s)",
                           (orjson.dumps(results).decode(), now)).fetchone()


def campaign(db: psycopg.Connection, campaign_id: int) -> dict[str, Any]:
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM core.campaigns WHERE campaign_id = %s", (campaign_id,)).fetchone()


def outbound(db: psycopg.Connection, outbound_id: int) -> dict[str, Any]:
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM core.outbound_messages WHERE outbound_id = %s",
                           (outbound_id,)).fetchone()


def queue(db: psycopg.Connection, name: str) -> list[dict[str, Any]]:
    """The messages of a pgmq queue (campaign_queue(), reply_queue()) in msg_id order; vt_in is
    vt's distance from now (s)."""
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            sql.SQL("SELECT msg_id, read_ct, message, vt, extract(epoch FROM vt - clock_timestamp())::float8"
                    " AS vt_in FROM pgmq.{} ORDER BY msg_id").format(sql.Identifier("q_" + name))
        ).fetchall()


def archived(db: psycopg.Connection, name: str) -> list[int]:
    return [r[0] for r in db.execute(
        sql.SQL("SELECT msg_id FROM pgmq.{} ORDER BY msg_id").format(sql.Identifier("a_" + name)))]


def campaign_queue(db: psycopg.Connection, campaign_id: int) -> str:
    """The name of a campaign's pgmq queue, as core.campaign_queue (its one home) builds it."""
    return db.execute("SELECT core.campaign_queue(%s)", (campaign_id,)).fetchone()[0]


def reply_queue(db: psycopg.Connection, number_id: int) -> str:
    """The name of a number's reply queue, as core.reply_queue builds it."""
    return db.execute("SELECT core.reply_queue(%s)", (number_id,)).fetchone()[0]


def later(t: Any, seconds: float) -> Any:
    """`seconds` after `t`: the tests of timing pass the time (p_now) instead of waiting."""
    return t + timedelta(seconds=seconds)


def clock(db: psycopg.Connection) -> Any:
    """The database's clock now, to measure delays the next call sets from."""
    return db.execute("SELECT clock_timestamp()").fetchone()[0]


def settings(db: psycopg.Connection, **values: Any) -> None:
    """Set tunables of core.settings for this test's database."""
    for column, value in values.items():
        db.execute(sql.SQL("UPDATE core.settings SET {} = %s").format(sql.Identifier(column)),
                   (value,))
