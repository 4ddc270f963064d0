"""Exactly once when answers are lost (core.resend_safe): a send whose answer was lost
(the worker timed out, the connection dropped, or the worker died holding it) may have
been accepted by Meta, and its status webhook may be hours late when the receiver was
down meanwhile (Meta retries for up to 7 days). It goes again only once the webhook
stream has demonstrably caught up past it, or after that bound.
"""

from __future__ import annotations

import psycopg

from tests import factories as f
from tests.factories import later


def lost(req: dict) -> dict:
    """The worker's result for a request that went out and got no answer (a timeout)."""
    return {**f.err(req, None), "error_message": "timeout", "unsure": True}


def beat(db: psycopg.Connection, t, start: float, end: float) -> None:
    """The receiver beats every 5 s from t+start to t+end."""
    for k in range(int(start), int(end) + 1, 5):
        f.receiver_up(db, now=later(t, k))


def test_a_lost_answer_is_not_resent_while_its_status_may_come_and_its_status_settles_it(
        db: psycopg.Connection) -> None:
    f.settings(db, status_grace_s=60, receiver_beat_s=5, retry_backoff_s=[1])
    acc = f.account(db)
    cid = f.running_campaign(db, acc, 2)
    t = f.clock(db)
    beat(db, t, 0, 0)
    a, b = f.claim_all(db, now=t)
    assert f.report(db, [lost(a), lost(b)], now=t)["retried"] == 2
    assert f.outbound(db, a["outbound_id"])["unsure_since"] is not None
    beat(db, t, 5, 30)
    assert f.claim_all(db, now=later(t, 30)) == []          # its status may still come
    # Meta had accepted a: its status arrives (by the opaque data) and settles it.
    db.execute("SELECT core.advance_outbound(ARRAY[%s]::bigint[], ARRAY['sent'], ARRAY[%s::timestamptz])",
               (a["outbound_id"], later(t, 40)))
    beat(db, t, 35, 95)
    again = f.claim_all(db, now=later(t, 95))
    assert [r["outbound_id"] for r in again] == [b["outbound_id"]]   # b never reached Meta
    assert f.outbound(db, a["outbound_id"])["attempts"] == 1
    assert f.outbound(db, b["outbound_id"])["unsure_since"] is None
    assert f.campaign(db, cid)["sent"] == 1


def test_after_a_receiver_outage_a_lost_answer_waits_for_the_stream_to_catch_up(db: psycopg.Connection) -> None:
    f.settings(db, status_grace_s=60, receiver_beat_s=5, retry_backoff_s=[1], unsure_resend_after_s=86400)
    acc = f.account(db)
    f.running_campaign(db, acc, 2)
    t = f.clock(db)
    beat(db, t, 0, 10)
    (req,) = f.claim_all(db, 1, now=t)
    f.report(db, [lost(req)], now=t)
    # The receiver was down from t+10 to t+300: Meta's status for req may still be retried.
    beat(db, t, 300, 400)
    assert db.execute("SELECT count(*) FROM core.receiver_outages").fetchone()[0] == 1
    # The campaign goes on without it.
    (other,) = f.claim_all(db, now=later(t, 400))
    assert other["outbound_id"] != req["outbound_id"]
    f.report(db, [f.ok(other)], now=later(t, 400))
    beat(db, t, 405, 450)
    assert f.claim_all(db, now=later(t, 450)) == []
    # That later message's status came through the receiver: the stream has caught up
    # past req, which may now go again.
    db.execute("SELECT core.advance_outbound(ARRAY[%s]::bigint[], ARRAY['sent'], ARRAY[%s::timestamptz])",
               (other["outbound_id"], later(t, 451)))
    db.execute("SELECT core.raise_watermarks(ARRAY[%s]::bigint[])", (other["outbound_id"],))
    beat(db, t, 455, 460)
    assert [r["outbound_id"] for r in f.claim_all(db, now=later(t, 460))] == [req["outbound_id"]]


def test_without_any_sign_a_lost_answer_goes_again_after_the_bound(db: psycopg.Connection) -> None:
    f.settings(db, status_grace_s=60, unsure_resend_after_s=3600, retry_backoff_s=[1])
    acc = f.account(db)
    f.running_campaign(db, acc, 1)
    t = f.clock(db)
    (req,) = f.claim_all(db, now=t)
    f.report(db, [lost(req)], now=t)
    # No receiver ever beat: nothing proves the stream caught up.
    assert f.claim_all(db, now=later(t, 3599)) == []
    assert [r["outbound_id"] for r in f.claim_all(db, now=later(t, 3600))] == [req["outbound_id"]]


def test_a_refused_connection_sent_nothing_and_is_retried_at_once(db: psycopg.Connection) -> None:
    f.settings(db, status_grace_s=60, retry_backoff_s=[1])
    acc = f.account(db)
    f.running_campaign(db, acc, 1)
    t = f.clock(db)
    (req,) = f.claim_all(db, now=t)
    f.report(db, [{**f.err(req, None), "unsure": False}], now=t)
    assert [r["outbound_id"] for r in f.claim_all(db, now=later(t, 2))] == [req["outbound_id"]]
