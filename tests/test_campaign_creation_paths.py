"""The two ways core.new_campaign looks up a list's known contacts (an index probe per
phone, or a hash join over the tenant's contacts) make the same campaign; a campaign's
messages go with it without a foreign key (migration 0118)."""

from __future__ import annotations

import random

import psycopg
from psycopg.rows import dict_row

from tests import factories as f


def known_tenant(db: psycopg.Connection) -> tuple[f.Account, list[dict]]:
    """An account with 300 known contacts (some opted out, one with attributes the list
    changes), and a 120-row list that mixes them with new phones, duplicates, an invalid
    row and a row renaming a known contact, in an order that is not phone order."""
    acc = f.account(db)
    f.create_campaign(db, acc, 300, [f.promo()])
    db.execute("UPDATE core.contacts SET opted_out = true, opted_out_at = now() WHERE wa_id = ANY(%s)",
               (f.phones(300)[::37],))
    rows = f.contacts(60, base=270) + f.contacts(40, base=5)    # 30 known + 30 new, 40 known
    rows += [dict(r) for r in rows[:10]]                        # 10 duplicates
    rows.append({"phone": "12", "name": "Short", "order_no": "X"})  # invalid
    rows.append({**f.contacts(1, base=100)[0], "name": "Renamed", "order_no": "Z-100"})
    random.Random(3).shuffle(rows)
    return acc, rows


def created_with(db: psycopg.Connection, acc: f.Account, rows: list[dict], path: str, known_max: int) -> dict:
    """The campaign created with the lookup forced to `path`, as ids-free facts, then undone."""
    with db.transaction(force_rollback=True):
        db.execute("SELECT set_config('pgwa.campaign_probe', %s, true)", (path,))
        if path == "off":   # the join as a large list plans it, whatever this small one would
            db.execute("SET LOCAL enable_nestloop = off")
            db.execute("SET LOCAL enable_mergejoin = off")
        created = f.create_campaign(db, acc, rows, [f.order_update(), f.promo()], on_invalid="skip")
        cid = created["campaign_id"]
        # How the phones were looked up: by index alone, or with a read of the tenant's
        # contacts (this transaction's own count of sequential scans of the table).
        reads = db.execute("SELECT pg_stat_get_xact_numscans('core.contacts'::regclass)").fetchone()[0]
        with db.cursor(row_factory=dict_row) as cur:
            outbound = cur.execute("""
                SELECT c.wa_id, o.variant, o.contact_id <= %s AS known
                FROM core.outbound_messages o JOIN core.contacts c USING (contact_id)
                WHERE o.campaign_id = %s ORDER BY o.outbound_id""", (known_max, cid)).fetchall()
        # Written by this transaction itself (not by a subtransaction of it): an update.
        contacts = db.execute("SELECT wa_id, name, attributes, opted_out,"
                              " xmin::text::bigint = pg_current_xact_id()::text::bigint % 4294967296 AS rewritten"
                              " FROM core.contacts ORDER BY wa_id").fetchall()
        queue = [{k: v for k, v in m["message"].items() if k != "o"}
                 for m in f.queue(db, f.campaign_queue(db, cid))]
        order = [m["message"]["o"] for m in f.queue(db, f.campaign_queue(db, cid))]
        ids = [r[0] for r in db.execute("SELECT outbound_id FROM core.outbound_messages WHERE campaign_id = %s"
                                        " ORDER BY outbound_id", (cid,)).fetchall()]
        assert order == ids   # the queue is in outbound (list) order
        counts = {k: created[k] for k in ("total", "skipped_opted_out", "skipped_invalid", "duplicates_removed")}
        return {"counts": counts, "invalid": created["invalid_rows"], "outbound": outbound,
                "contacts": contacts, "queue": queue, "reads": reads}


def test_the_index_probe_and_the_hash_join_make_the_same_campaign(db: psycopg.Connection) -> None:
    acc, rows = known_tenant(db)
    known_max = db.execute("SELECT max(contact_id) FROM core.contacts").fetchone()[0]
    probe = created_with(db, acc, rows, "on", known_max)
    hashed = created_with(db, acc, rows, "off", known_max)
    assert hashed.pop("reads") > probe.pop("reads")   # the hash join read them once more
    assert probe == hashed
    # And it is the campaign the list asks for: list order, duplicates and the invalid row
    # counted, opted-out contacts skipped, variants interleaved, only the renamed contact
    # rewritten among the known ones.
    opted_out = set(f.phones(300)[::37])
    sent = []
    for r in rows:
        if r["phone"] != "12" and r["phone"] not in sent and r["phone"] not in opted_out:
            sent.append(r["phone"])
    assert [o["wa_id"] for o in probe["outbound"]] == sent
    assert [o["variant"] for o in probe["outbound"]] == [i % 2 for i in range(len(sent))]
    assert probe["counts"]["duplicates_removed"] == 10 and probe["counts"]["skipped_invalid"] == 1
    assert probe["counts"]["skipped_opted_out"] == len({r["phone"] for r in rows} & opted_out)
    assert probe["invalid"] == [{"row": probe["invalid"][0]["row"], "value": "12",
                                 "reason": "phone is not 7 to 15 digits with a country code"}]
    rewritten = {c[0] for c in probe["contacts"] if c[4] and c[0] in set(f.phones(300))}
    assert rewritten == {f.phones(1, base=100)[0]}
    assert [q["t"] for q in probe["queue"]] == sent


def test_the_lookup_is_chosen_by_the_tenants_size(db: psycopg.Connection) -> None:
    acc = f.account(db)
    f.create_campaign(db, acc, 400, [f.promo()])
    db.execute("ANALYZE core.contacts")
    assert db.execute("SELECT core.tenant_contacts_estimate(%s)", (acc.tenant_id,)).fetchone()[0] >= 300
    assert db.execute("SELECT core.tenant_contacts_estimate(%s)", (acc.tenant_id + 1000,)).fetchone()[0] <= 1
    # A list much smaller than the tenant probes, and still creates its campaign unforced.
    created = f.create_campaign(db, acc, f.contacts(20, base=390), [f.promo()])
    assert (created["total"], created["duplicates_removed"]) == (20, 0)
    assert db.execute("SELECT count(*) FROM core.contacts").fetchone()[0] == 410


def test_deleting_a_campaign_deletes_its_messages_and_no_other(db: psycopg.Connection) -> None:
    acc = f.account(db)
    gone = f.create_campaign(db, acc, 5)["campaign_id"]
    kept = f.create_campaign(db, acc, 3)["campaign_id"]
    db.execute("DELETE FROM core.campaigns WHERE campaign_id = %s", (gone,))
    assert db.execute("SELECT campaign_id, count(*) FROM core.outbound_messages GROUP BY 1").fetchall() == [(kept, 3)]
    # Another tenant's campaign keeps its messages when this tenant's campaigns all go at once.
    other = f.account(db)
    theirs = f.create_campaign(db, other, 2)["campaign_id"]
    db.execute("DELETE FROM core.campaigns WHERE tenant_id = %s", (acc.tenant_id,))
    assert db.execute("SELECT campaign_id, count(*) FROM core.outbound_messages GROUP BY 1").fetchall() == [(theirs, 2)]


def queue_indexes(db: psycopg.Connection, name: str) -> list[str]:
    """A queue's index definitions, with the queue's own name taken out."""
    return sorted(r[0].replace(name, "<queue>") for r in db.execute(
        "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = %s::regclass",
        (f"pgmq.q_{name}",)))


def test_a_large_list_is_queued_as_a_small_one_is(db: psycopg.Connection) -> None:
    """From 10,000 rows the queue's indexes are built after its load and its message ids are
    the rows' numbers (in list order, the sequence going on after them); the messages are the JSON the claim reads, strings escaped (quotes,
    backslashes, control characters, non-ASCII), a missing value null."""
    acc = f.account(db)
    small = f.create_campaign(db, acc, 3, [f.order_update()])["campaign_id"]
    odd = ['Ann "A" O\'Neil', "back\\slash", "two\nlines\ttab", "\x01ctl", "Zoë 😀", "{\"x\": 1}"]
    rows = [{**r, "name": odd[i] if i < len(odd) else r["name"]} for i, r in enumerate(f.contacts(10_050, base=10))]
    created = f.create_campaign(db, acc, rows, [f.order_update(), f.promo()])
    large = created["campaign_id"]
    assert created["total"] == 10_050
    assert queue_indexes(db, f.campaign_queue(db, large)) == queue_indexes(db, f.campaign_queue(db, small))
    assert len(queue_indexes(db, f.campaign_queue(db, large))) == 2   # pgmq's primary key and vt index
    queued = f.queue(db, f.campaign_queue(db, large))
    ids = [r[0] for r in db.execute("SELECT outbound_id FROM core.outbound_messages WHERE campaign_id = %s"
                                    " ORDER BY outbound_id", (large,)).fetchall()]
    assert [m["message"]["o"] for m in queued] == ids
    msg_ids = [m["msg_id"] for m in queued]
    assert msg_ids == sorted(set(msg_ids))
    expected = [{"o": o, "t": r["phone"], "v": i % 2,
                 "p": [r["name"], r["order_no"]] if i % 2 == 0 else [r["name"]]}
                for i, (o, r) in enumerate(zip(ids, rows, strict=True))]
    assert [m["message"] for m in queued] == expected
    # The same messages as jsonb_build_object makes them, compared in SQL.
    assert db.execute(SAME_MESSAGES.format(queue=f.campaign_queue(db, large)), (large,)).fetchone()[0] == 10_050
    # The queue's sequence goes on after the last row: a later message is last.
    later = db.execute("SELECT pgmq.send(%s, '{\"o\": 0}')", (f.campaign_queue(db, large),)).fetchone()[0]
    assert later == msg_ids[-1] + 1


SAME_MESSAGES = """
    SELECT count(*) FROM core.outbound_messages o
    JOIN core.contacts c ON c.contact_id = o.contact_id
    JOIN LATERAL (SELECT q.message FROM pgmq.q_{queue} q WHERE (q.message->>'o')::bigint = o.outbound_id) q ON true
    WHERE o.campaign_id = %s AND q.message = jsonb_build_object('o', o.outbound_id, 't', c.wa_id, 'v', o.variant,
        'p', CASE o.variant WHEN 0 THEN jsonb_build_array(c.name, c.attributes->>'order_no')
                            ELSE jsonb_build_array(c.name) END)"""
