"""The send path: api.claim_sends (pacing, replies first, fairness, no double claim,
crash recovery) and api.report_sends (Meta's error codes, AIMD, counters), against a real
PostgreSQL through the api functions."""

from __future__ import annotations

import itertools
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import orjson
import psycopg
import pytest
from psycopg.rows import dict_row

from tests import factories as f
from tests.factories import later


def seconds(a, b) -> float:
    return (b - a).total_seconds()


def number(db: psycopg.Connection, acc: f.Account) -> dict:
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM core.wa_numbers WHERE number_id = %s", (acc.number_id,)).fetchone()


def notifications(db: psycopg.Connection) -> list[tuple[str, str, str]]:
    return db.execute("SELECT kind, severity, message FROM core.notifications ORDER BY notification_id").fetchall()


def send_minutes(db: psycopg.Connection) -> tuple[int, int, int, int]:
    return db.execute("SELECT coalesce(sum(accepted), 0)::int, coalesce(sum(retried), 0)::int, "
                      "coalesce(sum(failed), 0)::int, coalesce(sum(throttled), 0)::int FROM core.send_minutes").fetchone()


def add_reply(db: psycopg.Connection, acc: f.Account, to: str, text: str) -> int:
    """A rendered reply waiting in the number's reply queue, as the inbox or a bot queues one."""
    contact_id = db.execute("SELECT contact_id FROM core.contacts WHERE tenant_id = %s AND wa_id = %s",
                            (acc.tenant_id, to)).fetchone()[0]
    outbound_id = db.execute("INSERT INTO core.outbound_messages (number_id, contact_id, kind) "
                             "VALUES (%s, %s, 'reply') RETURNING outbound_id", (acc.number_id, contact_id)).fetchone()[0]
    body = {"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": text},
            "biz_opaque_callback_data": str(outbound_id)}
    db.execute("SELECT pgmq.send(%s, %s::jsonb)",
               (f.reply_queue(db, acc.number_id), orjson.dumps({"o": outbound_id, "b": body}).decode()))
    return outbound_id


# -- claim_sends: pacing -----------------------------------------------------------------

@pytest.fixture(autouse=True)
def _quarter_second_horizon(db: psycopg.Connection) -> None:
    """These tests count sends in a 250 ms pace horizon (the default is a second, so that
    a worker claims twice a second; the arithmetic is the same)."""
    f.settings(db, pace_horizon_ms=250)


def test_claim_paces_a_number_at_its_rate_within_the_horizon(db: psycopg.Connection) -> None:
    acc = f.account(db, throughput_mps=100)      # paced at 100 x 0.99 = 99 msg/s
    f.running_campaign(db, acc, 100)
    t = f.clock(db)
    first = f.claim(db, now=t)
    # 250 ms of a 99 msg/s pace: 24 sends from now, each 1/99 s after the one before.
    assert len(first) == 24 and first[0]["send_at"] == t
    gaps = [seconds(a["send_at"], b["send_at"]) for a, b in itertools.pairwise(first)]
    assert all(abs(g - 1 / 99) < 2e-6 for g in gaps), gaps
    assert abs(seconds(t, number(db, acc)["send_tat"]) - 24 / 99) < 2e-6
    # The pace is spent: a second claim at the same time gets nothing; 100 ms later it
    # gets what those 100 ms earned (0.35 s x 99 - 24 = 10.65), on the same spacing.
    assert f.claim(db, now=t) == []
    second = f.claim(db, now=later(t, 0.1))
    assert len(second) == 10
    assert abs(seconds(first[-1]["send_at"], second[0]["send_at"]) - 1 / 99) < 2e-6


def test_a_number_throttled_below_one_send_per_horizon_still_sends(db: psycopg.Connection) -> None:
    acc = f.account(db, throughput_mps=100)
    f.running_campaign(db, acc, 50)
    t = f.clock(db)
    requests = f.claim(db, now=t)
    for k, r in enumerate(requests[:6]):     # six throttle events, 2 s apart: 100 -> 1.5625 msg/s
        f.report(db, [f.err(r, 130429, 429)], now=later(t, 2 * k))
    assert number(db, acc)["rate_mps"] == 1.5625
    t = later(t, 20)
    assert len(f.claim(db, now=t)) == 1   # not zero: 250 ms at 1.5625 msg/s is less than one send
    assert f.claim(db, now=t) == []
    assert abs(seconds(t, number(db, acc)["send_tat"]) - 1 / 1.5625) < 2e-6


def test_numbers_are_paced_independently_in_one_claim(db: psycopg.Connection) -> None:
    one, two = f.account(db, throughput_mps=100), f.account(db, throughput_mps=40)
    f.running_campaign(db, one, 50)
    f.running_campaign(db, two, f.contacts(50, base=100))
    t = f.clock(db)
    claimed = f.claim(db, now=t)
    for acc, rate, expected in ((one, 99, 24), (two, 40 * 0.99, 9)):
        mine = [r for r in claimed if r["phone_number_id"] == acc.phone_number_id]
        assert len(mine) == expected
        assert mine[0]["send_at"] == t
        gaps = [(b["send_at"] - a["send_at"]).total_seconds() for a, b in itertools.pairwise(mine)]
        assert all(abs(g - 1 / rate) < 2e-6 for g in gaps), gaps


def write_in(db: psycopg.Connection, acc: f.Account, senders: list[str]) -> None:
    """Inbound messages from `senders` reach the number in one webhook, processed at once."""
    payload = {"object": "whatsapp_business_account", "entry": [{"id": acc.waba_id, "changes": [{
        "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": acc.phone_number_id},
            "contacts": [{"profile": {"name": "A"}, "wa_id": s} for s in senders],
            "messages": [{"from": s, "id": f"wamid.in.{acc.number_id}.{s}", "timestamp": "1767225600",
                          "type": "text", "text": {"body": "hello?"}} for s in senders]}}]}]}
    db.execute("SELECT api.ingest_webhook(%s::jsonb)", (orjson.dumps(payload).decode(),))
    db.execute("SELECT api.process_webhooks(100)")


def test_inbound_messages_take_their_share_of_a_sending_numbers_pace(db: psycopg.Connection) -> None:
    acc = f.account(db, throughput_mps=100)      # 99 msg/s
    other = f.account(db, throughput_mps=100)
    for a in (acc, other):
        f.running_campaign(db, a, 100)
    t = f.clock(db)
    first = [r for r in f.claim(db, now=t) if r["phone_number_id"] == acc.phone_number_id]
    assert len(first) == 24
    # Ten users write to the number (and ten to another tenant's): Meta counts them in
    # the number's throughput, so the next claim's sends start ten paces later.
    write_in(db, acc, f.phones(10, base=500))
    write_in(db, other, f.phones(10, base=600))
    assert number(db, acc)["send_tat"] == number(db, other)["send_tat"]       # nothing moved yet
    t2 = later(t, 0.25)
    second = [r for r in f.claim(db, now=t2) if r["phone_number_id"] == acc.phone_number_id]
    assert abs(seconds(first[-1]["send_at"], second[0]["send_at"]) - 11 / 99) < 2e-6
    # 0.5 s of pace minus 24 + 10 taken: 15 sends (the other number, whose inbound came
    # from the same webhook batch size, got the same, and its own moved only its own).
    assert len(second) == 15
    assert db.execute("SELECT count(*) FROM core.number_inbound").fetchone()[0] == 0


def test_inbound_traffic_delays_an_idle_or_flooded_number_by_at_most_its_window(db: psycopg.Connection) -> None:
    idle = f.account(db, throughput_mps=100)
    f.running_campaign(db, idle, 100)
    t = f.clock(db)
    db.execute("UPDATE core.wa_numbers SET send_tat = %s WHERE number_id = %s", (later(t, -5), idle.number_id))
    # A number that has sent nothing for a second has room for what came in: a claim
    # starts now.
    write_in(db, idle, f.phones(30, base=500))
    assert f.claim(db, now=t)[0]["send_at"] == t
    # A flood of inbound messages (more than a second's worth) holds a busy number for a
    # second at most: the window Meta counts them in.
    write_in(db, idle, f.phones(200, base=1000))
    tat = number(db, idle)["send_tat"]
    nxt = f.claim(db, now=later(t, 0.1))
    assert nxt == [] and number(db, idle)["send_tat"] == later(tat, 1)


def test_a_paused_number_keeps_no_inbound_debt(db: psycopg.Connection) -> None:
    acc = f.account(db, throughput_mps=100)
    db.execute("UPDATE core.wa_numbers SET paused_reason = 'test' WHERE number_id = %s", (acc.number_id,))
    write_in(db, acc, f.phones(5, base=500))
    assert db.execute("SELECT count(*) FROM core.number_inbound").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM core.inbox_messages WHERE number_id = %s",
                      (acc.number_id,)).fetchone()[0] == 5


def test_a_claim_starts_the_campaigns_scheduled_before_its_time(db: psycopg.Connection) -> None:
    acc = f.account(db)
    t = f.clock(db)
    cid = f.create_campaign(db, acc, 3, scheduled_at=later(t, 3600))["campaign_id"]
    assert f.claim_all(db, now=later(t, 3599)) == []
    assert len(f.claim_all(db, now=later(t, 3600))) == 3
    c = f.campaign(db, cid)
    assert (c["status"], c["started_at"]) == ("running", later(t, 3600))


def test_claim_takes_no_more_than_asked(db: psycopg.Connection) -> None:
    acc = f.account(db)
    f.running_campaign(db, acc, 30)
    assert len(f.claim(db, 7)) == 7
    assert len(f.claim_all(db, 0)) == 0
    assert db.execute("SELECT count(*) FROM core.outbound_messages WHERE state = 'in_flight'").fetchone()[0] == 7


def test_replies_are_claimed_before_campaign_traffic(db: psycopg.Connection) -> None:
    acc = f.account(db, throughput_mps=100)
    cid = f.running_campaign(db, acc, 40)
    replies = [add_reply(db, acc, to, f"reply {i}") for i, to in enumerate(f.phones(3, base=5))]
    claimed = f.claim(db)
    assert [r["outbound_id"] for r in claimed[:3]] == replies
    assert claimed[0]["body"]["text"] == {"body": "reply 0"}
    assert {r["queue_name"] for r in claimed[3:]} == {f.campaign_queue(db, cid)} and len(claimed) >= 20
    f.report(db, [f.ok(r) for r in claimed])
    assert f.queue(db, f.reply_queue(db, acc.number_id)) == []


def test_two_running_campaigns_on_one_number_get_equal_shares(db: psycopg.Connection) -> None:
    acc = f.account(db, throughput_mps=100)
    one, two = f.running_campaign(db, acc, 50), f.running_campaign(db, acc, f.contacts(50, base=100))
    claimed = f.claim(db)
    shares = [sum(r["queue_name"] == f.campaign_queue(db, c) for r in claimed) for c in (one, two)]
    assert abs(shares[0] - shares[1]) <= 1 and sum(shares) == len(claimed) >= 20


def test_a_campaign_with_less_than_its_share_leaves_the_rest_to_the_others(db: psycopg.Connection) -> None:
    acc = f.account(db, throughput_mps=100)
    big = f.running_campaign(db, acc, 150)
    small = f.running_campaign(db, acc, f.contacts(3, base=1000))
    other = f.running_campaign(db, acc, f.contacts(150, base=2000))
    # Campaigns are read in a fresh order each claim; in every order the budget is used.
    names = {c: f.campaign_queue(db, c) for c in (big, small, other)}
    for _ in range(10):
        f.catch_up(db)
        f.expire_claims(db, small)
        claimed = f.claim(db)
        counts = {c: sum(r["queue_name"] == name for r in claimed) for c, name in names.items()}
        assert len(claimed) == 24 and counts[small] == 3, counts
        assert min(counts[big], counts[other]) >= 8, counts


def test_campaigns_sharing_a_slow_number_take_turns(db: psycopg.Connection) -> None:
    acc = f.account(db, throughput_mps=100)
    one, two = f.running_campaign(db, acc, 30), f.running_campaign(db, acc, f.contacts(30, base=100))
    db.execute("UPDATE core.wa_numbers SET rate_mps = 2")    # one send per claim
    queues = []
    for _ in range(20):
        f.catch_up(db)
        (request,) = f.claim(db)
        queues.append(request["queue_name"])
    assert queues.count(f.campaign_queue(db, one)) > 0 and queues.count(f.campaign_queue(db, two)) > 0, queues


def test_racing_claims_never_hand_out_the_same_message(db: psycopg.Connection, db_url: str) -> None:
    f.settings(db, pace_horizon_ms=5000)
    accounts = [f.account(db), f.account(db)]
    for i, acc in enumerate(accounts):
        f.running_campaign(db, acc, f.contacts(300, base=1000 * i))
    # One time for every claim: the pace (5 s of 970 msg/s per number) never runs out and
    # no claim expires, so only the race decides who gets what.
    t = f.clock(db)
    last = [1, 1]
    # Rounds: both racers start each claim together; after a round in which neither got
    # anything, nothing is left to claim (a racer that holds a number's row gets its
    # messages, so a round is empty for both only when the queues are).
    done = threading.Event()
    rounds = threading.Barrier(2, action=lambda: done.set() if last == [0, 0] else None)

    def racer(k: int) -> list[int]:
        got: list[int] = []
        try:
            with psycopg.connect(db_url, autocommit=True) as conn:
                while True:
                    rounds.wait(timeout=30)
                    if done.is_set():
                        return got
                    rows = conn.execute("SELECT outbound_id FROM api.claim_sends(%s, 15, %s)",
                                        (f"w{k}", t)).fetchall()
                    last[k] = len(rows)
                    got.extend(r[0] for r in rows)
        except BaseException:
            rounds.abort()    # the other racer stops waiting too
            raise

    with ThreadPoolExecutor(2) as pool:
        claimed = [future.result() for future in [pool.submit(racer, k) for k in (0, 1)]]
    # That both racers got some is not asserted: a claim locks the numbers it reads (FOR
    # UPDATE SKIP LOCKED, fetched ten at a time), so on a loaded machine one racer may
    # win every round and take everything, which is correct. What must hold is that no
    # message is handed out twice and none is lost; the test below pins the skipping.
    assert not set(claimed[0]) & set(claimed[1])
    everything = claimed[0] + claimed[1]
    assert len(everything) == len(set(everything)) == 600
    assert db.execute("SELECT count(*) FILTER (WHERE state = 'in_flight' AND attempts = 1) FROM core.outbound_messages"
                      ).fetchone()[0] == 600


def test_a_claim_skips_the_numbers_another_claim_holds_and_takes_the_rest_after(
        db: psycopg.Connection, db_url: str) -> None:
    acc = f.account(db)
    f.running_campaign(db, acc, 40)
    t = f.clock(db)
    with psycopg.connect(db_url) as holder, psycopg.connect(db_url, autocommit=True) as other:
        other.execute("SET lock_timeout = '5s'")     # waiting on the lock would fail, not hang
        held = [r[0] for r in holder.execute("SELECT outbound_id FROM api.claim_sends('a', 10, %s)", (t,))]
        assert len(held) == 10
        # The first claim's transaction is still open: the number is skipped, not waited for.
        assert other.execute("SELECT outbound_id FROM api.claim_sends('b', 10, %s)", (t,)).fetchall() == []
        holder.commit()
        # Once it committed, 'a' is the number's sender for a pace horizon after its last
        # message's time (test below); then 'b' may take the number.
        after = [r[0] for r in other.execute("SELECT outbound_id FROM api.claim_sends('b', 10, %s)",
                                             (t + timedelta(seconds=1.5),))]
    assert len(after) == 10 and not set(held) & set(after)


def two_numbers(db: psycopg.Connection, first_n: int, second_n: int) -> tuple[f.Account, f.Account, datetime]:
    """Two numbers at 100 msg/s (99 paced), each with a running campaign of so many
    contacts, a pace horizon of 1 s, and the time their schedules start from."""
    f.settings(db, pace_horizon_ms=1000)
    first, second = f.account(db, throughput_mps=100), f.account(db, throughput_mps=100)
    f.running_campaign(db, first, f.contacts(first_n))
    f.running_campaign(db, second, f.contacts(second_n, base=1000))
    t = f.clock(db)
    f.catch_up(db, t)
    return first, second, t


def claimed_per_number(db: psycopg.Connection, worker: str, now: datetime, max_rows: int = 500) -> dict[str, int]:
    """What one api.claim_sends by ``worker`` at ``now`` took: messages by phone number id."""
    got: dict[str, int] = {}
    for r in f.claim(db, max_rows, worker=worker, now=now):
        got[r["phone_number_id"]] = got.get(r["phone_number_id"], 0) + 1
    return got


def test_one_worker_at_a_time_sends_a_number(db: psycopg.Connection) -> None:
    # Each worker paces its own sends; two on one number overlap in Meta's second when the
    # earlier one runs late. The worker whose claim took a number's messages is its
    # sender until a pace horizon (1 s) after the last one's time; it renews with each claim.
    first, second, t = two_numbers(db, 300, 300)

    def claim(worker: str, at: timedelta, max_rows: int = 500) -> dict[str, int]:
        return claimed_per_number(db, worker, t + at, max_rows)

    def sender(acc: f.Account) -> tuple[str, float]:
        """The number's sender, and until when (seconds after t)."""
        who, until = db.execute("SELECT sender, sender_until - %s FROM core.wa_numbers WHERE number_id = %s",
                                (t, acc.number_id)).fetchone()
        return who, round(until.total_seconds(), 4)

    # 'a' takes the first number's next second (99 at 99 msg/s); 'b' only the other one.
    assert claim("a", timedelta(0), 99) == {first.phone_number_id: 99}
    assert sender(first) == ("a", 2.0)             # its last send's time is 1 s, + 1 s
    assert claim("b", timedelta(0)) == {second.phone_number_id: 99}
    assert sender(second) == ("b", 2.0)
    # Half a second on, each renews its own number; neither gets the other's.
    assert claim("b", timedelta(seconds=0.5)) == {second.phone_number_id: 49}
    assert claim("a", timedelta(seconds=0.5)) == {first.phone_number_id: 49}
    assert sender(first) == ("a", round(1 + 49 / 99 + 1, 4))
    # 'a' claims no more (it stopped, or died): until its time is up 'b' passes the
    # number by...
    assert claim("b", timedelta(seconds=2.49)) == {second.phone_number_id: 99}
    # ... and then takes it over.
    assert claim("b", timedelta(seconds=2.5)) == {first.phone_number_id: 99}
    assert sender(first) == ("b", 4.5)
    assert claim("a", timedelta(seconds=2.5)) == {}
    # 'b' stops and gives its numbers up (api.release_numbers): 'a' may take them at once.
    assert db.execute("SELECT api.release_numbers('b')").fetchone()[0] == 2
    assert db.execute("SELECT api.release_numbers('b')").fetchone()[0] == 0
    assert claim("a", timedelta(seconds=3)) == {first.phone_number_id: 49, second.phone_number_id: 50}
    # A claim or a release must name its worker: an unnamed one would hold numbers no
    # other claim could tell from its own.
    for call in ("SELECT * FROM api.claim_sends(' ', 10)", "SELECT api.release_numbers(NULL)"):
        with pytest.raises(psycopg.Error) as err:
            db.execute(call)
        assert err.value.sqlstate == "PW100" and "worker" in str(err.value)


def test_a_worker_behind_its_schedule_keeps_only_the_numbers_it_still_sends_for(
        db: psycopg.Connection, db_url: str) -> None:
    # A worker behind its schedule may hold a number's messages past its hold, with
    # nothing more to claim (a campaign's end): api.keep_numbers keeps it the sender for a
    # pace horizon from now, if no other worker took the number meanwhile.
    first, second, t = two_numbers(db, 150, 50)

    def claim(worker: str, at: float, max_rows: int = 500) -> dict[str, int]:
        return claimed_per_number(db, worker, t + timedelta(seconds=at), max_rows)

    def keep(worker: str, at: float, *numbers: f.Account) -> list[str]:
        return db.execute("SELECT api.keep_numbers(%s, %s, %s)",
                          (worker, [n.phone_number_id for n in numbers], t + timedelta(seconds=at))).fetchone()[0]

    def hold(acc: f.Account) -> tuple[str, float, float]:
        """The number's sender, until when, and its schedule (send_tat), in seconds after t."""
        who, until, tat = db.execute(
            "SELECT sender, extract(epoch FROM sender_until - %s)::float8, extract(epoch FROM send_tat - %s)::float8 "
            "FROM core.wa_numbers WHERE number_id = %s", (t, t, acc.number_id)).fetchone()
        return who, round(until, 4), round(tat, 4)

    assert claim("a", 0, 50) == {first.phone_number_id: 50}
    assert claim("b", 0) == {second.phone_number_id: 50}
    until_a, tat = hold(first)[1:]
    assert until_a == round(50 / 99 + 1, 4)
    # 1.2 s on, 'a' still sends the first number's 50 (it is behind): kept until 2.2 s.
    # The second number is 'b''s: not kept, and 'b''s hold does not move.
    assert keep("a", 1.2, first, second) == [first.phone_number_id]
    assert hold(first) == ("a", 2.2, tat)            # the schedule stays: those were paced
    assert hold(second)[:2] == ("b", round(50 / 99 + 1, 4))
    # A keep never shortens a hold.
    assert keep("a", 0.1, first) == [first.phone_number_id]
    assert hold(first)[:2] == ("a", 2.2)
    # Meanwhile no other worker takes the number...
    assert claim("b", 2.1) == {}
    # ... and once the hold has ended, one does; then 'a' cannot keep it any more.
    assert claim("b", 2.2) == {first.phone_number_id: 99}
    assert keep("a", 2.3, first) == []
    assert hold(first)[0] == "b"
    assert keep("a", 2.3) == []
    # 'b''s hold on it ends at 4.2 s (its 99 at 99 msg/s from 2.2 s, + 1 s). Past that,
    # with no other claim since, 'b' is still the sender: a keep then still holds.
    assert hold(first)[:2] == ("b", 4.2)
    assert keep("b", 4.5, first) == [first.phone_number_id]
    assert hold(first)[:2] == ("b", 5.5)
    # A number another transaction holds (a claim, a report's pace update) is not waited
    # for: not kept now, and kept when asked again.
    with psycopg.connect(db_url) as other:
        other.execute("SELECT 1 FROM core.wa_numbers WHERE number_id = %s FOR NO KEY UPDATE",
                      (second.number_id,))
        assert keep("b", 4.5, first, second) == [first.phone_number_id]
    assert keep("b", 4.5, second) == [second.phone_number_id]
    for worker, ids in ((" ", []), (None, []), ("a", [str(i) for i in range(10_001)])):
        with pytest.raises(psycopg.Error) as err:
            db.execute("SELECT api.keep_numbers(%s, %s)", (worker, ids))
        assert err.value.sqlstate == "PW100"
        assert ("worker" if len(ids) == 0 else "p_phone_number_ids") in str(err.value)


def test_expired_claim_comes_back_once_its_status_would_have_come(db: psycopg.Connection) -> None:
    f.settings(db, claim_timeout_s=5, status_grace_s=60, receiver_beat_s=5)
    acc = f.account(db)
    cid = f.running_campaign(db, acc, 3)
    t = f.clock(db)
    first = f.claim_all(db, now=t)
    # For the claim timeout plus the 250 ms pace horizon, rounded up to a second.
    assert [m["vt"] for m in f.queue(db, f.campaign_queue(db, cid))] == [later(t, 6)] * 3
    assert f.claim_all(db, now=later(t, 5.9)) == []          # invisible while claimed
    # Its worker died: Meta may have the sends, and their statuses may still come. With the
    # receiver up all along, they go again once a status would have come (60 s), not before.
    for k in range(0, 70, 5):
        f.receiver_up(db, now=later(t, k))
    assert f.claim_all(db, now=later(t, 6)) == []
    assert [m["vt"] for m in f.queue(db, f.campaign_queue(db, cid))] == [later(t, 66)] * 3
    again = f.claim_all(db, now=later(t, 66))
    assert [r["outbound_id"] for r in again] == [r["outbound_id"] for r in first]
    assert [r["attempt"] for r in again] == [2, 2, 2]


def test_expired_claim_settled_by_a_status_meanwhile_is_dropped_not_resent(db: psycopg.Connection) -> None:
    acc = f.account(db)
    cid = f.running_campaign(db, acc, 3)
    first = f.claim_all(db)
    settled = first[0]["outbound_id"]
    # The worker died after the POST; Meta's 'sent' status arrived (matched by the opaque data).
    db.execute("SELECT core.advance_outbound(ARRAY[%s]::bigint[], ARRAY['sent'], ARRAY[now()])", (settled,))
    f.expire_claims(db, cid)
    again = f.claim_all(db)
    assert [r["outbound_id"] for r in again] == [r["outbound_id"] for r in first[1:]]
    assert settled not in [m["message"]["o"] for m in f.queue(db, f.campaign_queue(db, cid))]
    assert f.outbound(db, settled)["attempts"] == 1
    c = f.campaign(db, cid)
    assert (c["sent"], c["finished"]) == (1, 1)


# -- report_sends: success -----------------------------------------------------------------

def test_success_stores_the_wamid_and_moves_the_counters(db: psycopg.Connection) -> None:
    acc = f.account(db)
    cid = f.running_campaign(db, acc, 4, [f.order_update(), f.promo()])
    requests = f.claim_all(db)
    result = f.report(db, [f.ok(r) for r in requests])
    assert result == {"accepted": 4, "retried": 0, "failed": 0, "paused": 0, "ignored": 0}
    rows = db.execute("SELECT state, wamid, accepted_at IS NOT NULL FROM core.outbound_messages "
                      "ORDER BY outbound_id").fetchall()
    assert rows == [("accepted", f"wamid.{r['outbound_id']}", True) for r in requests]
    assert f.queue(db, f.campaign_queue(db, cid)) == [] and f.archived(db, f.campaign_queue(db, cid)) == []
    c = f.campaign(db, cid)
    assert (c["sent"], c["finished"], c["failed"], c["status"]) == (4, 4, 0, "completed")
    assert db.execute("SELECT array_agg(sent ORDER BY variant) FROM core.campaign_templates").fetchone()[0] == [2, 2]
    assert send_minutes(db) == (4, 0, 0, 0)


# -- report_sends: Meta's error codes -------------------------------------------------------

@pytest.mark.parametrize("code", [190, 131042, 132001, 132015, 132016])
def test_auth_payment_and_template_errors_pause_the_campaign_and_fail_nothing(db: psycopg.Connection,
                                                                              code: int) -> None:
    acc = f.account(db)
    cid = f.running_campaign(db, acc, 10)
    requests = f.claim_all(db, 5)
    result = f.report(db, [f.err(requests[0], code), f.err(requests[1], code)] + [f.ok(r) for r in requests[2:4]])
    assert result == {"accepted": 2, "retried": 0, "failed": 0, "paused": 2, "ignored": 0}
    # The last message of the batch reports the same error later: still one notification.
    assert f.report(db, [f.err(requests[4], code)])["paused"] == 1
    c = f.campaign(db, cid)
    assert c["status"] == "paused" and str(code) in c["pause_reason"]
    assert (c["failed"], c["sent"]) == (0, 2)
    (note,) = notifications(db)
    assert note[:2] == ("campaign_paused", "critical") and str(code) in note[2]
    back = [f.outbound(db, r["outbound_id"]) for r in (requests[0], requests[1], requests[4])]
    assert [(o["state"], o["attempts"], o["error_code"]) for o in back] == [("queued", 0, code)] * 3
    # Back in the queue at once, but not claimed while the campaign is paused.
    visible = {m["msg_id"] for m in f.queue(db, f.campaign_queue(db, cid)) if m["vt_in"] <= 0}
    assert {requests[i]["msg_id"] for i in (0, 1, 4)} <= visible
    assert f.claim_all(db) == []
    db.execute("SELECT api.resume_campaign(%s, %s)", (acc.tenant_id, cid))
    resumed = f.claim_all(db)
    assert len(resumed) == 8
    assert {r["attempt"] for r in resumed} == {1}


def test_throughput_errors_halve_the_rate_and_retry_shortly(db: psycopg.Connection) -> None:
    code = 130429
    acc = f.account(db, throughput_mps=200)
    cid = f.running_campaign(db, acc, 10)
    t = f.clock(db)
    requests = f.claim_all(db, now=t)
    result = f.report(db, [f.err(requests[0], code, 429)] + [f.ok(r) for r in requests[3:]], now=t)
    assert (result["retried"], result["accepted"], result["failed"]) == (1, 7, 0)
    n = number(db, acc)
    assert n["rate_mps"] == 100 and n["throttled_at"] == t
    # The number sends nothing for the throttle hold (core.settings, a quarter of a
    # second); the message comes back in one to two.
    assert n["send_tat"] == later(t, 0.25)
    o = f.outbound(db, requests[0]["outbound_id"])
    assert (o["state"], o["attempts"], o["error_category"]) == ("queued", 0, "rate_limit")
    (m,) = [m for m in f.queue(db, f.campaign_queue(db, cid)) if m["msg_id"] == requests[0]["msg_id"]]
    assert later(t, 1) <= m["vt"] <= later(t, 2)
    assert notifications(db) == [] and f.campaign(db, cid)["status"] == "running"
    assert send_minutes(db) == (7, 0, 0, 1)
    # Sends already in flight report the same throttle within the second: no second halving.
    f.report(db, [f.err(requests[1], code, 429)], now=later(t, 0.5))
    assert number(db, acc)["rate_mps"] == 100
    # A throttle more than a second later is a new event: halved again.
    f.report(db, [f.err(requests[2], code, 429)], now=later(t, 1.1))
    assert number(db, acc)["rate_mps"] == 50


def test_messages_handed_back_unsent_return_after_the_hold_with_their_attempt_uncounted(
        db: psycopg.Connection) -> None:
    f.settings(db, retry_backoff_s=[0])
    acc = f.account(db, throughput_mps=100)
    cid = f.running_campaign(db, acc, 4)
    f.report(db, [f.err(r, 131000, 500) for r in f.claim_all(db)])    # a real attempt each
    again = f.claim_all(db)
    assert len(again) == 4 and {r["attempt"] for r in again} == {2}
    f.settings(db, throttle_hold_ms=400)       # the hold is a setting, read by the report
    t = f.clock(db)
    unsent = [{"outbound_id": r["outbound_id"], "queue_name": r["queue_name"], "msg_id": r["msg_id"],
               "sent": False} for r in again]
    assert f.report(db, unsent, now=t) == {"accepted": 0, "retried": 4, "failed": 0, "paused": 0, "ignored": 0}
    # Queued again with the real attempt and its error, the unsent one not counted.
    assert {(o["state"], o["attempts"], o["error_code"])
            for o in (f.outbound(db, r["outbound_id"]) for r in again)} == {("queued", 1, 131000)}
    assert [m["vt"] for m in f.queue(db, f.campaign_queue(db, cid))] == [later(t, 0.4)] * 4
    # Nothing more counted against the number: no error, no throttle, the rate untouched.
    assert send_minutes(db) == (0, 4, 0, 0)
    assert number(db, acc)["rate_mps"] == 100
    # Handed back again (a report redelivered): ignored.
    assert f.report(db, unsent)["ignored"] == 4


def test_a_halved_rate_paces_the_next_claims(db: psycopg.Connection) -> None:
    acc = f.account(db, throughput_mps=100)
    f.running_campaign(db, acc, 100)
    t = f.clock(db)
    requests = f.claim(db, now=t)
    f.report(db, [f.err(requests[0], 130429, 429)], now=t)
    assert number(db, acc)["send_tat"] == later(t, 0.25)
    assert f.claim(db, now=t) == []        # the throttle hold
    # Once the hold is over, 250 ms at 50 msg/s, from the end of the hold.
    resumed = f.claim(db, now=later(t, 0.25))
    assert len(resumed) == 12 and resumed[0]["send_at"] == later(t, 0.25)
    gaps = [seconds(a["send_at"], b["send_at"]) for a, b in itertools.pairwise(resumed)]
    assert all(abs(g - 1 / 50) < 2e-6 for g in gaps), gaps


def test_clean_reports_grow_the_rate_back_but_never_above_the_throughput(db: psycopg.Connection) -> None:
    acc = f.account(db, throughput_mps=100)
    f.running_campaign(db, acc, 40)
    t = f.clock(db)
    requests = f.claim_all(db, now=t)
    f.report(db, [f.err(requests[0], 130429, 429)], now=t)
    assert number(db, acc)["rate_mps"] == 50
    # During the throttle hold, a clean batch does not grow the rate.
    f.report(db, [f.ok(requests[1])], now=later(t, 0.2))
    assert number(db, acc)["rate_mps"] == 50
    # Growth counts from the end of the hold, not from the throttle: 0.25 s of clean
    # sending after it, 50 + 40 x 0.25.
    f.report(db, [f.ok(requests[8])], now=later(t, 0.5))
    assert abs(number(db, acc)["rate_mps"] - 60) < 1e-9
    db.execute("UPDATE core.wa_numbers SET rate_mps = 50")
    # Two fifths of the limit per second of clean sending, however many reports that second has.
    rates = []
    for k, r in enumerate(requests[2:7], start=1):
        f.report(db, [f.ok(r)], now=later(t, 0.5 + k))
        rates.append(number(db, acc)["rate_mps"])
    assert rates == [90, 100, 100, 100, 100]
    # A tenth of a second after the last change: 50 + 40 x 0.1.
    db.execute("UPDATE core.wa_numbers SET rate_mps = 50, rate_changed_at = %s", (later(t, 5.5),))
    f.report(db, [f.ok(requests[7])], now=later(t, 5.6))
    assert abs(number(db, acc)["rate_mps"] - 54) < 1e-9
    # A batch with a retried error does not grow it.
    db.execute("UPDATE core.wa_numbers SET rate_mps = 60")
    f.report(db, [f.ok(requests[15]), f.err(requests[16], 131000, 500)], now=later(t, 10))
    assert number(db, acc)["rate_mps"] == 60


def test_the_throttle_hold_and_codes_have_one_home_that_the_worker_reads(db: psycopg.Connection) -> None:
    f.settings(db, throttle_hold_ms=400, pace_horizon_ms=600)
    db.execute("UPDATE core.meta_error_codes SET backoff = 'throttle' WHERE code = 131056")   # pair rate limit
    # What the worker holds a lane for, and how long, and how often it claims: read from
    # core.settings and core.meta_error_codes, not copied in Python.
    assert db.execute("SELECT * FROM api.send_policy()").fetchone() == (400, [130429, 131056], 600, 30)
    acc = f.account(db, throughput_mps=100)
    f.running_campaign(db, acc, 10)
    t = f.clock(db)
    (req,) = f.claim_all(db, 1, now=t)
    assert f.report(db, [f.err(req, 131056)], now=t)["retried"] == 1
    n = number(db, acc)
    assert (n["rate_mps"], n["send_tat"]) == (50, later(t, 0.4))
    with pytest.raises(psycopg.errors.CheckViolation):
        f.settings(db, throttle_hold_ms=-1)


@pytest.mark.parametrize("code", [131000, 131016, None], ids=["131000", "131016", "network"])
def test_transient_errors_retry_with_backoff_then_fail_after_max_attempts(db: psycopg.Connection,
                                                                          code: int | None) -> None:
    f.settings(db, max_attempts=2)
    acc = f.account(db)
    cid = f.running_campaign(db, acc, 1)
    t = f.clock(db)
    (first,) = f.claim_all(db, now=t)
    assert f.report(db, [f.err(first, code, 500)], now=t)["retried"] == 1
    o = f.outbound(db, first["outbound_id"])
    assert (o["state"], o["attempts"], o["error_category"]) == ("queued", 1, "transient")
    assert o["error_code"] == (code if code is not None else -2)      # -2: no error object
    (m,) = f.queue(db, f.campaign_queue(db, cid))
    assert later(t, 5 * 0.8) <= m["vt"] <= later(t, 5 * 1.2)        # the first backoff, jittered
    assert f.claim_all(db, now=later(t, 3.9)) == []
    (second,) = f.claim_all(db, now=later(t, 6))
    assert second["attempt"] == 2
    assert f.report(db, [f.err(second, code, 500)])["failed"] == 1
    o = f.outbound(db, first["outbound_id"])
    assert (o["state"], o["error_category"], o["failed_at"] is not None) == ("failed", "transient", True)
    assert f.queue(db, f.campaign_queue(db, cid)) == [] and f.archived(db, f.campaign_queue(db, cid)) == [first["msg_id"]]
    c = f.campaign(db, cid)
    assert (c["failed"], c["finished"], c["status"]) == (1, 1, "completed")
    assert notifications(db) == []
    assert send_minutes(db) == (0, 1, 1, 0)


def test_backoff_grows_with_the_attempt(db: psycopg.Connection) -> None:
    acc = f.account(db)
    cid = f.running_campaign(db, acc, 1)
    t = f.clock(db)
    for attempt, backoff in enumerate([5, 10, 20], start=1):
        (req,) = f.claim_all(db, now=t)
        assert req["attempt"] == attempt
        f.report(db, [f.err(req, 131000, 500)], now=t)
        (m,) = f.queue(db, f.campaign_queue(db, cid))
        assert later(t, backoff * 0.8) <= m["vt"] <= later(t, backoff * 1.2)
        t = m["vt"]          # the next attempt, once the backoff is over


def test_recipient_error_fails_at_once_and_archives_the_message(db: psycopg.Connection) -> None:
    acc = f.account(db)
    cid = f.running_campaign(db, acc, 2, [f.order_update(), f.promo()])
    requests = f.claim_all(db)
    result = f.report(db, [f.err(requests[0], 131026), f.ok(requests[1])])
    assert (result["failed"], result["accepted"], result["retried"]) == (1, 1, 0)
    o = f.outbound(db, requests[0]["outbound_id"])
    assert (o["state"], o["attempts"], o["error_code"], o["error_category"]) == ("failed", 1, 131026, "recipient")
    assert f.queue(db, f.campaign_queue(db, cid)) == []
    assert f.archived(db, f.campaign_queue(db, cid)) == [requests[0]["msg_id"]]
    assert db.execute("SELECT array_agg(failed ORDER BY variant) FROM core.campaign_templates").fetchone()[0] == [1, 0]
    assert notifications(db) == []


def test_a_lasting_error_raises_one_notice_per_number_code_and_hour_that_counts_on(
        db: psycopg.Connection) -> None:
    acc = f.account(db)
    f.running_campaign(db, acc, 6)
    requests = f.claim_all(db)
    for r in requests[:3]:                  # three reports, one failing message each
        f.report(db, [f.err(r, 999999)])
    (note,) = db.execute("SELECT notification_id, message, details, read_at FROM core.notifications").fetchall()
    assert note[2]["messages"] == 3 and "on 3 message(s)" in note[1] and note[3] is None
    db.execute("UPDATE core.notifications SET read_at = now()")       # an operator read it
    f.report(db, [f.err(requests[3], 999999), f.err(requests[4], 999999)])
    again = db.execute("SELECT notification_id, message, details, read_at FROM core.notifications").fetchall()
    assert [(n[0], n[2]["messages"], n[3]) for n in again] == [(note[0], 5, None)]   # unread again
    assert "on 5 message(s)" in again[0][1]
    f.report(db, [f.err(requests[5], 130497)])                      # another code: its own notice
    codes = db.execute("SELECT details->>'error_code', details->>'messages' FROM core.notifications "
                       "ORDER BY notification_id").fetchall()
    assert codes == [("999999", "5"), ("130497", "1")]


def test_unknown_error_code_takes_the_default_policy(db: psycopg.Connection) -> None:
    acc = f.account(db)
    cid = f.running_campaign(db, acc, 2)
    requests = f.claim_all(db)
    assert f.report(db, [f.err(r, 999999) for r in requests])["retried"] == 2
    o = f.outbound(db, requests[0]["outbound_id"])
    assert (o["state"], o["error_code"], o["error_category"]) == ("queued", 999999, "unknown")
    (note,) = notifications(db)
    assert note[:2] == ("send_error", "warning") and "999999" in note[2]
    assert f.campaign(db, cid)["status"] == "running"


def test_a_duplicate_report_changes_nothing(db: psycopg.Connection) -> None:
    acc = f.account(db)
    cid = f.running_campaign(db, acc, 6)
    requests = f.claim_all(db)
    results = ([f.ok(r) for r in requests[:3]] + [f.err(requests[3], 131026), f.err(requests[4], 131000, 500),
                                                   f.err(requests[5], 130429, 429)])
    assert f.report(db, results) == {"accepted": 3, "retried": 2, "failed": 1, "paused": 0, "ignored": 0}

    def snapshot() -> tuple:
        return (f.campaign(db, cid), db.execute("SELECT * FROM core.campaign_templates").fetchall(),
                db.execute("SELECT * FROM core.outbound_messages ORDER BY outbound_id").fetchall(),
                [(m["msg_id"], m["read_ct"]) for m in f.queue(db, f.campaign_queue(db, cid))], f.archived(db, f.campaign_queue(db, cid)),
                send_minutes(db), db.execute("SELECT rate_mps FROM core.wa_numbers").fetchall())

    before = snapshot()
    # Redelivered later, when the throttle has worn off: still nothing moves, the rate included.
    db.execute("UPDATE core.wa_numbers SET throttled_at = throttled_at - interval '5 seconds'")
    assert f.report(db, results) == {"accepted": 0, "retried": 0, "failed": 0, "paused": 0, "ignored": 6}
    assert snapshot() == before


def test_a_message_reported_twice_in_one_batch_counts_once_and_keeps_its_success(db: psycopg.Connection) -> None:
    acc = f.account(db)
    cid = f.running_campaign(db, acc, 2)
    one, two = f.claim_all(db)
    # The claim expired mid-send and the message went out twice: one success, one error.
    result = f.report(db, [f.ok(one), f.err(one, 131000, 500), f.ok(two), f.ok(two)])
    assert result == {"accepted": 2, "retried": 0, "failed": 0, "paused": 0, "ignored": 2}
    assert [f.outbound(db, r["outbound_id"])["state"] for r in (one, two)] == ["accepted", "accepted"]
    assert send_minutes(db) == (2, 0, 0, 0)
    c = f.campaign(db, cid)
    assert (c["sent"], c["finished"], c["status"]) == (2, 2, "completed")


def test_a_status_before_the_report_is_not_counted_twice(db: psycopg.Connection) -> None:
    acc = f.account(db)
    cid = f.running_campaign(db, acc, 2)
    requests = f.claim_all(db)
    early = requests[0]["outbound_id"]
    db.execute("SELECT core.advance_outbound(ARRAY[%s]::bigint[], ARRAY['delivered'], ARRAY[now()])", (early,))
    f.report(db, [f.ok(r) for r in requests])
    o = f.outbound(db, early)
    assert (o["state"], o["wamid"], o["accepted_at"] is not None) == ("delivered", f"wamid.{early}", True)
    assert f.queue(db, f.campaign_queue(db, cid)) == []
    c = f.campaign(db, cid)
    assert (c["sent"], c["delivered"], c["finished"], c["status"]) == (2, 1, 2, "completed")
    assert db.execute("SELECT sent, delivered FROM core.campaign_templates").fetchone() == (2, 1)


def test_statuses_that_arrived_before_the_wamid_was_known_are_applied_by_the_report(db: psycopg.Connection) -> None:
    acc = f.account(db)
    cid = f.running_campaign(db, acc, 1)
    (req,) = f.claim_all(db)
    other = f.account(db, with_templates=False)
    db.execute("INSERT INTO core.status_events (wamid, status, number_id, occurred_at) VALUES "
               "('wamid.early', 'sent', %(n)s, now()), ('wamid.early', 'read', %(n)s, now()), "
               # Through another tenant's number: never this message's, whatever its wamid.
               "('wamid.early', 'failed', %(other)s, now())",
               {"n": acc.number_id, "other": other.number_id})
    assert f.report(db, [f.ok(req, "wamid.early")])["accepted"] == 1
    o = f.outbound(db, req["outbound_id"])
    assert (o["state"], o["wamid"], o["read_at"] is not None) == ("read", "wamid.early", True)
    assert db.execute("SELECT count(*) FROM core.status_events WHERE outbound_id = %s",
                      (req["outbound_id"],)).fetchone()[0] == 2
    assert db.execute("SELECT outbound_id FROM core.status_events WHERE status = 'failed'").fetchone() == (None,)
    c = f.campaign(db, cid)
    assert (c["sent"], c["delivered"], c["read"], c["finished"]) == (1, 1, 1, 1)


def test_a_report_for_an_unknown_message_is_ignored_and_a_malformed_one_refused(db: psycopg.Connection) -> None:
    acc = f.account(db)
    f.running_campaign(db, acc, 1)
    (req,) = f.claim_all(db)
    ghost = dict(f.ok(req), outbound_id=10**12, wamid="wamid.ghost")
    assert f.report(db, [ghost])["ignored"] == 1
    assert f.outbound(db, req["outbound_id"])["state"] == "in_flight"
    with pytest.raises(psycopg.Error) as caught:
        db.execute("SELECT api.report_sends('{}'::jsonb)")
    assert caught.value.diag.sqlstate == "PW100"


# -- counters ------------------------------------------------------------------------

RECOUNT = """
SELECT count(*)::int AS total,
       count(*) FILTER (WHERE state IN ('accepted', 'sent', 'delivered', 'read'))::int AS sent,
       count(*) FILTER (WHERE state IN ('delivered', 'read'))::int AS delivered,
       count(*) FILTER (WHERE state = 'failed')::int AS failed,
       count(*) FILTER (WHERE state = 'cancelled')::int AS cancelled,
       count(*) FILTER (WHERE state IN ('accepted', 'sent', 'delivered', 'read', 'failed'))::int AS finished
FROM core.outbound_messages WHERE campaign_id = %s
"""


def test_counters_equal_a_recount_after_a_mixed_run(db: psycopg.Connection) -> None:
    f.settings(db, max_attempts=3)
    acc = f.account(db)
    cid = f.running_campaign(db, acc, 120, [f.order_update(), f.promo()])
    rnd = random.Random(4)
    for _ in range(40):
        # Time passes between batches: the number's throttle wears off.
        db.execute("UPDATE core.wa_numbers SET rate_mps = throughput_mps, throttled_at = NULL")
        requests = f.claim_all(db, 30)
        if not requests:
            if f.campaign(db, cid)["status"] != "running":
                break
            f.expire_claims(db, cid)
            continue
        results = []
        for r in requests:
            roll = rnd.random()
            if roll < 0.1:   # the worker died: no report, the claim expires
                continue
            if roll < 0.2:   # a status came first
                db.execute("SELECT core.advance_outbound(ARRAY[%s]::bigint[], ARRAY['delivered'], ARRAY[now()])",
                           (r["outbound_id"],))
            if roll < 0.6:
                results.append(f.ok(r))
            elif roll < 0.7:
                results.append(f.err(r, 131026))
            elif roll < 0.8:
                results.append(f.err(r, 130429, 429))
            else:
                results.append(f.err(r, 131000, 500))
        result = f.report(db, results + results[:3])   # a few reported twice
        assert result["ignored"] == min(3, len(results))
        f.expire_claims(db, cid)
    c = f.campaign(db, cid)
    assert c["status"] == "completed"
    with db.cursor(row_factory=dict_row) as cur:
        recount = cur.execute(RECOUNT, (cid,)).fetchone()
        assert {k: c[k] for k in recount} == recount
        assert recount["failed"] > 0 and recount["sent"] > 0 and recount["delivered"] > 0
        per_template = cur.execute("""
            SELECT t.variant, t.total, t.sent, t.delivered, t.failed,
                   count(o.*)::int AS r_total,
                   count(o.*) FILTER (WHERE o.state IN ('accepted', 'sent', 'delivered', 'read'))::int AS r_sent,
                   count(o.*) FILTER (WHERE o.state IN ('delivered', 'read'))::int AS r_delivered,
                   count(o.*) FILTER (WHERE o.state = 'failed')::int AS r_failed
            FROM core.campaign_templates t
            LEFT JOIN core.outbound_messages o ON o.campaign_id = t.campaign_id AND o.variant = t.variant
            WHERE t.campaign_id = %s GROUP BY t.variant, t.total, t.sent, t.delivered, t.failed""",
                                   (cid,)).fetchall()
    for t in per_template:
        assert (t["total"], t["sent"], t["delivered"], t["failed"]) == (
            t["r_total"], t["r_sent"], t["r_delivered"], t["r_failed"]), t
    minutes = send_minutes(db)
    assert minutes[0] == recount["sent"] and minutes[2] == recount["failed"]


def test_sweep_settles_messages_held_by_a_dead_worker_when_their_campaign_was_cancelled(db: psycopg.Connection) -> None:
    acc = f.account(db)
    cid = f.running_campaign(db, acc, 3)
    held = f.claim_all(db)
    db.execute("SELECT api.cancel_campaign(%s, %s)", (acc.tenant_id, cid))
    # The worker died holding them: nothing ever reports, and the claim timeout passes.
    db.execute("UPDATE core.outbound_messages SET claimed_at = now() - interval '1 hour'")
    summary = db.execute("SELECT core.sweep_sends()").fetchone()[0]
    assert summary["stuck_cancelled"] == len(held) == 3
    assert {f.outbound(db, r["outbound_id"])["state"] for r in held} == {"cancelled"}
    assert f.campaign(db, cid)["cancelled"] == 3


def test_sweep_leaves_campaigns_cancelled_long_ago_alone(db: psycopg.Connection) -> None:
    # The sweep reads a cancelled campaign's messages for an hour after the cancel (plus two
    # claim timeouts), not every cancelled campaign's every minute for ever.
    acc = f.account(db)
    cid = f.running_campaign(db, acc, 2)
    held = f.claim_all(db)
    db.execute("SELECT api.cancel_campaign(%s, %s)", (acc.tenant_id, cid))
    db.execute("UPDATE core.outbound_messages SET claimed_at = now() - interval '3 days'")
    db.execute("UPDATE core.campaigns SET cancelled_at = now() - interval '2 days' WHERE campaign_id = %s", (cid,))
    summary = db.execute("SELECT core.sweep_sends()").fetchone()[0]
    assert summary["stuck_cancelled"] == 0
    assert {f.outbound(db, r["outbound_id"])["state"] for r in held} == {"in_flight"}


def test_a_number_whose_pace_never_changed_grows_by_a_full_step(db: psycopg.Connection) -> None:
    acc = f.account(db, throughput_mps=100)
    # As registered before any pace change: no rate_changed_at, the pace below the limit
    # (e.g. the number was re-registered with a higher throughput).
    db.execute("UPDATE core.wa_numbers SET rate_mps = 20, rate_changed_at = NULL WHERE number_id = %s",
               (acc.number_id,))
    f.running_campaign(db, acc, 5)
    t = f.clock(db)
    f.report(db, [f.ok(r) for r in f.claim_all(db, now=t)], now=t)
    assert number(db, acc)["rate_mps"] == 60          # 20 + two fifths of 100
