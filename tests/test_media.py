"""Media in SQL (db/functions/media.sql): uploads recorded and reused while valid, Meta's
limits in one table, the inbound download queue (claim, retry with back-off, give up),
what the inbox shows, and media, list and CTA-URL replies from agents and bots.

State is built through the api functions; inbound media arrives as Meta's webhook payload
through api.ingest_webhook and api.process_webhooks. Time is passed as p_now."""

from __future__ import annotations

import hashlib
import threading
import uuid
from datetime import timedelta

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tests.test_bots import NUMBERS, Inbox, sqlstate

pytest_plugins = ["sim_fixtures"] if __package__ in (None, "") else ["tests.sim_fixtures"]

JPEG = b"\xff\xd8\xff\xe0" + b"pgwa-test-image" * 10


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def inbox(db: psycopg.Connection) -> Inbox:
    return Inbox.build(db)


def now(db: psycopg.Connection):
    return db.execute("SELECT now()").fetchone()[0]


def save(inbox: Inbox, data: bytes = JPEG, mime: str = "image/jpeg", meta_id: str | None = None,
         at=None, number_id: int | None = None, tenant_id: int | None = None) -> dict:
    with inbox.db.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM api.save_media(%s, %s, %s, %s, %s, %s, %s, NULL, %s)", (
            tenant_id or inbox.tenant_id, number_id or inbox.number_id, meta_id or f"{uuid.uuid4().int % 10**15}",
            mime, len(data), sha(data), "photo.jpg", at)).fetchone()


def prepare(inbox: Inbox, data: bytes = JPEG, mime: str = "image/jpeg", size: int | None = None, at=None) -> dict:
    with inbox.db.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM api.prepare_media_upload(%s, %s, %s, %s, %s, %s)", (
            inbox.tenant_id, inbox.number_id, mime, len(data) if size is None else size, sha(data), at)).fetchone()


def image_message(inbox: Inbox, sender: str, media_id: str = "778899", *, kind: str = "image",
                  caption: str | None = "look", mime: str = "image/jpeg") -> dict:
    payload = inbox.message("", sender)
    msg = payload["entry"][0]["changes"][0]["value"]["messages"][0]
    del msg["text"]
    msg["type"] = kind
    msg[kind] = {"id": media_id, "mime_type": mime, "sha256": "abc"}
    if caption is not None:
        msg[kind]["caption"] = caption
    return payload


def claim(db: psycopg.Connection, max_rows: int = 10, at=None) -> list[dict]:
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM api.claim_media_downloads('test', %s, %s)", (max_rows, at)).fetchall()


def complete(db: psycopg.Connection, results: list[dict], at=None) -> list[dict]:
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM api.complete_media_downloads(%s, %s)", (Jsonb(results), at)).fetchall()


def media_row(db: psycopg.Connection, media_id: int) -> dict:
    with db.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM core.media WHERE media_id = %s", (media_id,)).fetchone()


# --- limits --------------------------------------------------------------------------------

def test_limits_live_in_one_table_and_name_the_field_the_size_and_the_limit(inbox: Inbox) -> None:
    types = {r[0]: (r[1], r[2]) for r in inbox.db.execute("SELECT * FROM api.media_types()")}
    assert types["image/jpeg"] == ("image", 5 << 20)
    assert types["application/pdf"] == ("document", 100 << 20)
    assert types["image/webp"][0] == "sticker"
    with pytest.raises(psycopg.Error) as exc:
        prepare(inbox, size=(5 << 20) + 1)
    assert sqlstate(exc) == "PW145"
    assert "file:" in str(exc.value) and str(5 << 20) in str(exc.value) and "image" in str(exc.value)
    with pytest.raises(psycopg.Error) as exc:
        prepare(inbox, mime="image/gif")
    assert sqlstate(exc) == "PW146"
    assert "image/gif" in str(exc.value) and "image/jpeg" in exc.value.diag.message_hint
    # MIME parameters are not part of the type.
    assert prepare(inbox, mime="audio/ogg; codecs=opus")["media_type"] == "audio"


# --- uploads -------------------------------------------------------------------------------

def test_an_upload_is_recorded_with_its_expiry_and_the_same_bytes_are_reused_while_valid(inbox: Inbox) -> None:
    t0 = now(inbox.db)
    first = save(inbox, meta_id="111", at=t0)
    assert first["reused"] is False and first["state"] == "uploaded" and first["direction"] == "out"
    assert first["expires_at"] == t0 + timedelta(days=30)
    assert first["sha256"] == sha(JPEG) and first["size_bytes"] == len(JPEG) and first["filename"] == "photo.jpg"
    # Before an upload, the same bytes on the same number are found: nothing to upload.
    target = prepare(inbox, at=t0 + timedelta(days=10))
    assert target["reuse"] is not None and "111" in target["reuse"] and target["access_token"]
    again = save(inbox, meta_id="222", at=t0 + timedelta(days=10))
    assert again["media_id"] == first["media_id"] and again["reused"] is True and again["meta_media_id"] == "111"
    # Within a day of expiry it is not reused: a new upload gets a new id.
    assert prepare(inbox, at=t0 + timedelta(days=29, hours=1))["reuse"] is None
    fresh = save(inbox, meta_id="333", at=t0 + timedelta(days=29, hours=1))
    assert fresh["media_id"] != first["media_id"] and fresh["meta_media_id"] == "333"
    # Other bytes are another file.
    assert save(inbox, data=JPEG + b"x", at=t0)["media_id"] not in (first["media_id"], fresh["media_id"])


def test_media_for_send_gives_metas_id_and_refuses_expired_foreign_and_missing_media(inbox: Inbox) -> None:
    other = Inbox.build(inbox.db, NUMBERS[2])
    t0 = now(inbox.db)
    media = save(inbox, meta_id="4455", at=t0)

    def for_send(tenant: int, media_id: int, number: int, at) -> dict:
        return inbox.db.execute("SELECT core.media_for_send(%s, %s, %s, %s)",
                                (tenant, media_id, number, at)).fetchone()[0]

    assert for_send(inbox.tenant_id, media["media_id"], inbox.number_id, t0) == {"id": "4455"}
    for tenant, number, at, code in [
        (other.tenant_id, other.number_id, t0, "PW245"),            # another tenant's
        (inbox.tenant_id, inbox.number_id, t0 + timedelta(days=29, hours=1), "PW345"),  # expiring within a day
        (inbox.tenant_id, inbox.number_id, t0 + timedelta(days=31), "PW345"),            # expired
    ]:
        with pytest.raises(psycopg.Error) as exc:
            for_send(tenant, media["media_id"], number, at)
        assert sqlstate(exc) == code
        assert exc.value.diag.message_hint
    with pytest.raises(psycopg.Error) as exc:
        for_send(inbox.tenant_id, media["media_id"] + 1000, inbox.number_id, t0)
    assert sqlstate(exc) == "PW245"


def test_a_tenant_lists_and_reads_only_its_own_media(inbox: Inbox) -> None:
    other = Inbox.build(inbox.db, NUMBERS[2])
    mine = save(inbox)
    theirs = save(other, data=JPEG + b"other")
    listed = [r[0] for r in inbox.db.execute("SELECT media_id FROM api.media(%s)", (inbox.tenant_id,))]
    assert listed == [mine["media_id"]]
    with pytest.raises(psycopg.Error) as exc:
        inbox.db.execute("SELECT api.media_content(%s, %s)", (inbox.tenant_id, theirs["media_id"]))
    assert sqlstate(exc) == "PW245"
    with pytest.raises(psycopg.Error) as exc:        # another tenant's number
        inbox.db.execute("SELECT api.media(%s, %s)", (inbox.tenant_id, other.number_id))
    assert sqlstate(exc) == "PW202"
    with pytest.raises(psycopg.Error) as exc:        # uploaded without a stored copy
        inbox.db.execute("SELECT api.media_content(%s, %s)", (inbox.tenant_id, mine["media_id"]))
    assert sqlstate(exc) == "PW301"


# --- inbound downloads ---------------------------------------------------------------------

def test_inbound_media_is_queued_claimed_once_and_stored(inbox: Inbox) -> None:
    sender = inbox.sender()
    inbox.deliver(image_message(inbox, sender, "9001"), image_message(inbox, inbox.sender(), "9002", kind="sticker",
                                                                       caption=None, mime="image/webp"))
    pending = inbox.db.execute("SELECT count(*) FROM core.media WHERE state = 'pending'").fetchone()[0]
    assert pending == 2
    one = claim(inbox.db, 1)
    assert len(one) == 1 and one[0]["attempts"] == 1
    assert one[0]["access_token"] == NUMBERS[0]["token"] and one[0]["phone_number_id"] == inbox.pnid
    rest = claim(inbox.db, 10)
    assert len(rest) == 1 and rest[0]["media_id"] != one[0]["media_id"]      # the first is leased
    assert {d["meta_media_id"] for d in one + rest} == {"9001", "9002"}
    assert claim(inbox.db, 10) == []
    first = [d for d in one + rest if d["meta_media_id"] == "9001"]
    assert first[0]["media_type"] == "image" and first[0]["mime_type"] == "image/jpeg"
    done = complete(inbox.db, [{"media_id": first[0]["media_id"], "storage_key": "t/ab/cd", "sha256": sha(JPEG),
                                "size_bytes": len(JPEG), "mime_type": "image/jpeg"}])
    assert done == [{"media_id": first[0]["media_id"], "state": "stored", "last_error": None}]
    content = inbox.db.execute("SELECT storage_key, mime_type, size_bytes FROM api.media_content(%s, %s)",
                               (inbox.tenant_id, first[0]["media_id"])).fetchone()
    assert content == ("t/ab/cd", "image/jpeg", len(JPEG))
    # A second report of the same file changes nothing.
    assert complete(inbox.db, [{"media_id": first[0]["media_id"], "error": "late"}]) == []
    # The inbox shows the media with its state.
    contact = inbox.contact(sender)
    with inbox.db.cursor(row_factory=dict_row) as cur:
        msg = cur.execute("SELECT * FROM api.conversation(%s, %s, %s)",
                          (inbox.tenant_id, inbox.number_id, contact)).fetchone()
    assert msg["type"] == "image" and msg["body"] == "look"
    assert msg["media"] == {"type": "image", "caption": "look", "media_id": first[0]["media_id"],
                            "mime_type": "image/jpeg", "size_bytes": len(JPEG), "state": "stored",
                            "content_url": f"/v1/media/{first[0]['media_id']}/content"}


def test_a_redelivered_webhook_does_not_queue_the_download_twice(inbox: Inbox) -> None:
    payload = image_message(inbox, inbox.sender(), "9100")
    inbox.deliver(payload)
    inbox.deliver(payload)
    assert inbox.db.execute("SELECT count(*) FROM core.media").fetchone()[0] == 1


def test_a_failed_download_is_retried_with_back_off_then_given_up_with_the_reason(inbox: Inbox) -> None:
    inbox.db.execute("UPDATE core.settings SET media_download_attempts = 3, media_download_backoff_s = '{10,60}'")
    inbox.deliver(image_message(inbox, inbox.sender(), "9200"))
    t = now(inbox.db)
    for attempt, wait in ((1, 10), (2, 60)):
        [job] = claim(inbox.db, at=t)
        assert job["attempts"] == attempt
        [done] = complete(inbox.db, [{"media_id": job["media_id"], "error": "HTTP 503"}], at=t)
        assert done["state"] == "pending" and done["last_error"] == "HTTP 503"
        assert claim(inbox.db, at=t + timedelta(seconds=wait - 1)) == []
        t += timedelta(seconds=wait)
    [job] = claim(inbox.db, at=t)
    [done] = complete(inbox.db, [{"media_id": job["media_id"], "error": "HTTP 503"}], at=t)
    assert done == {"media_id": job["media_id"], "state": "failed", "last_error": "HTTP 503"}
    assert claim(inbox.db, at=t + timedelta(days=1)) == []


def test_a_worker_that_dies_loses_its_claim_when_the_lease_ends(inbox: Inbox) -> None:
    inbox.deliver(image_message(inbox, inbox.sender(), "9300"))
    t = now(inbox.db)
    [job] = claim(inbox.db, at=t)
    assert claim(inbox.db, at=t + timedelta(seconds=119)) == []
    [again] = claim(inbox.db, at=t + timedelta(seconds=121))
    assert again["media_id"] == job["media_id"] and again["attempts"] == 2


def test_a_permanent_error_or_a_file_outside_the_limits_is_given_up_at_once(inbox: Inbox) -> None:
    inbox.deliver(image_message(inbox, inbox.sender(), "9400"), image_message(inbox, inbox.sender(), "9401"))
    a, b = claim(inbox.db)
    done = {d["media_id"]: d for d in complete(inbox.db, [
        {"media_id": a["media_id"], "error": "Graph error 100: unknown media id", "permanent": True},
        {"media_id": b["media_id"], "storage_key": "k", "sha256": sha(JPEG), "size_bytes": (5 << 20) + 1,
         "mime_type": "image/jpeg"}])}
    assert done[a["media_id"]]["state"] == "failed"
    assert done[b["media_id"]]["state"] == "failed" and "over Meta's limit" in done[b["media_id"]]["last_error"]
    assert media_row(inbox.db, b["media_id"])["storage_key"] is None


def test_an_expired_media_id_is_given_up_instead_of_claimed(inbox: Inbox) -> None:
    inbox.deliver(image_message(inbox, inbox.sender(), "9500"))
    assert claim(inbox.db, at=now(inbox.db) + timedelta(days=8)) == []
    row = inbox.db.execute("SELECT state, last_error FROM core.media").fetchone()
    assert row[0] == "failed" and "expired" in row[1]


def test_two_workers_racing_never_claim_the_same_file(inbox: Inbox, db_url: str) -> None:
    inbox.deliver(*(image_message(inbox, inbox.sender(), f"96{i:02d}") for i in range(40)))
    got: list[list[int]] = [[], []]

    def worker(slot: int) -> None:
        with psycopg.connect(db_url, autocommit=True) as conn:
            while rows := conn.execute("SELECT media_id FROM api.claim_media_downloads(%s, 3)",
                                       (f"w{slot}",)).fetchall():
                got[slot].extend(r[0] for r in rows)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got[0]) + len(got[1]) == 40
    assert not set(got[0]) & set(got[1])


# --- replies -------------------------------------------------------------------------------

def _reply(inbox: Inbox, contact: int, reply: dict, tenant_id: int | None = None) -> None:
    inbox.db.execute("SELECT api.reply(%s, %s, %s, %s)",
                     (tenant_id or inbox.tenant_id, inbox.number_id, contact, Jsonb(reply)))


def test_an_agent_replies_with_an_uploaded_image_a_link_a_list_and_a_cta_url(inbox: Inbox) -> None:
    sender = inbox.sender()
    inbox.say("hello", sender, name="Ana Lima")
    contact = inbox.contact(sender)
    media = save(inbox, meta_id="5566")
    _reply(inbox, contact, {"type": "image", "media": media["media_id"], "caption": "For {{first_name}}"})
    _reply(inbox, contact, {"type": "document", "link": "https://cdn.example/inv.pdf", "filename": "inv.pdf"})
    _reply(inbox, contact, {"type": "list", "text": "Pick one", "button": "Options", "header": "Menu",
                            "sections": [{"title": "Fast", "rows": [{"id": "exp", "title": "Express",
                                                                     "description": "Next day"}]},
                                         {"title": "Cheap", "rows": [{"id": "std", "title": "Standard"}]}]})
    _reply(inbox, contact, {"type": "cta_url", "text": "Track it", "display_text": "Track",
                            "url": "https://shop.example/t/1", "footer": "Thanks"})
    bodies = [m["b"] for m in inbox.queued()]
    assert bodies[0]["type"] == "image" and bodies[0]["image"] == {"id": "5566", "caption": "For Ana"}
    assert bodies[1]["document"] == {"link": "https://cdn.example/inv.pdf", "filename": "inv.pdf"}
    assert bodies[2]["interactive"] == {
        "type": "list", "body": {"text": "Pick one"}, "header": {"type": "text", "text": "Menu"},
        "action": {"button": "Options", "sections": [
            {"title": "Fast", "rows": [{"id": "exp", "title": "Express", "description": "Next day"}]},
            {"title": "Cheap", "rows": [{"id": "std", "title": "Standard"}]}]}}
    assert bodies[3]["interactive"] == {
        "type": "cta_url", "body": {"text": "Track it"}, "footer": {"text": "Thanks"},
        "action": {"name": "cta_url", "parameters": {"display_text": "Track", "url": "https://shop.example/t/1"}}}
    # The inbox shows the outbound media, linked to the upload.
    with inbox.db.cursor(row_factory=dict_row) as cur:
        rows = cur.execute("SELECT type, body, media FROM api.conversation(%s, %s, %s) ORDER BY message_id",
                           (inbox.tenant_id, inbox.number_id, contact)).fetchall()
    assert rows[1]["type"] == "image" and rows[1]["body"] == "For Ana"
    assert rows[1]["media"]["media_id"] == media["media_id"] and rows[1]["media"]["state"] == "uploaded"
    assert rows[2]["media"] == {"type": "document", "filename": "inv.pdf", "link": "https://cdn.example/inv.pdf"}
    assert rows[3]["type"] == "interactive" and rows[3]["media"] is None


@pytest.mark.parametrize("reply, field", [
    ({"type": "image"}, '"media"'),
    ({"type": "image", "media": 1, "link": "https://x.example/a.jpg"}, "not both"),
    ({"type": "image", "link": "ftp://x.example/a.jpg"}, "link"),
    ({"type": "audio", "link": "https://x.example/a.ogg", "caption": "hi"}, "caption"),
    ({"type": "image", "link": "https://x.example/a.jpg", "filename": "a.jpg"}, "filename"),
    ({"type": "list", "text": "x", "button": "Open", "sections": []}, "sections"),
    ({"type": "list", "text": "x", "button": "A menu label that is too long", "sections": [{"rows": [{"id": "a", "title": "A"}]}]},
     "button"),
    ({"type": "list", "text": "x", "button": "Open", "sections": [{"rows": [{"id": "a", "title": "A"}]},
                                                                  {"rows": [{"id": "b", "title": "B"}]}]},
     "sections[0].title"),
    ({"type": "list", "text": "x", "button": "Open", "sections": [{"rows": [{"id": "a", "title": "T" * 25}]}]},
     "sections[0].rows[0].title"),
    ({"type": "list", "text": "x", "button": "Open", "sections": [{"rows": [{"id": "a", "title": "A",
                                                                             "description": "d" * 73}]}]},
     "sections[0].rows[0].description"),
    ({"type": "list", "text": "x", "button": "Open", "sections": [
        {"title": "s", "rows": [{"id": str(i), "title": "A"} for i in range(6)]},
        {"title": "t", "rows": [{"id": f"b{i}", "title": "B"} for i in range(5)]}]}, "at most 10"),
    ({"type": "list", "text": "x", "button": "Open", "sections": [{"rows": [{"id": "a", "title": "A"},
                                                                            {"id": "a", "title": "B"}]}]}, "unique"),
    ({"type": "cta_url", "text": "x", "display_text": "Open", "url": "javascript:alert(1)"}, "url"),
    ({"type": "cta_url", "text": "x", "display_text": "A button text too long", "url": "https://x.example"},
     "display_text"),
    ({"type": "cta_url", "text": "", "display_text": "Open", "url": "https://x.example"}, "text"),
])
def test_a_bad_media_list_or_cta_reply_is_refused_naming_the_field(inbox: Inbox, reply: dict, field: str) -> None:
    sender = inbox.sender()
    inbox.say("hello", sender)
    with pytest.raises(psycopg.Error) as exc:
        _reply(inbox, inbox.contact(sender), reply)
    assert sqlstate(exc) == "PW100"
    assert field in exc.value.diag.message_primary
    assert exc.value.diag.message_hint
    assert len(inbox.queued()) == 0


def test_a_reply_cannot_send_another_tenants_or_an_expired_upload(inbox: Inbox) -> None:
    other = Inbox.build(inbox.db, NUMBERS[2])
    theirs = save(other, meta_id="7777")
    old = save(inbox, data=JPEG + b"old", meta_id="8888", at=now(inbox.db) - timedelta(days=29, hours=12))
    sender = inbox.sender()
    inbox.say("hello", sender)
    for media, code in ((theirs["media_id"], "PW245"), (old["media_id"], "PW345")):
        with pytest.raises(psycopg.Error) as exc:
            _reply(inbox, inbox.contact(sender), {"type": "image", "media": media})
        assert sqlstate(exc) == code
    assert inbox.queued() == []


def test_a_bot_answers_with_an_uploaded_image_and_a_list(inbox: Inbox) -> None:
    media = save(inbox, meta_id="6677")
    inbox.rule("exact", "menu", {"type": "list", "text": "Hi {{first_name}}", "button": "Menu",
                                 "sections": [{"rows": [{"id": "a", "title": "Pizza"}]}]})
    inbox.rule("exact", "photo", {"type": "image", "media": media["media_id"], "caption": "Our shop"})
    other = Inbox.build(inbox.db, NUMBERS[2])
    with pytest.raises(psycopg.Error) as exc:       # a rule may not send another tenant's upload
        other.rule("exact", "x", {"type": "image", "media": media["media_id"]})
    assert sqlstate(exc) == "PW245"
    sender = inbox.sender()
    inbox.say("menu", sender, name="Ana Lima")
    inbox.say("photo", sender)
    bodies = [m["b"] for m in inbox.queued()]
    assert bodies[0]["interactive"]["type"] == "list" and bodies[0]["interactive"]["body"] == {"text": "Hi Ana"}
    assert bodies[1]["image"] == {"id": "6677", "caption": "Our shop"}
