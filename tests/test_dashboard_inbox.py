"""The inbox screen over HTTP (Starlette's TestClient; the simulator for a file's upload):
per-user unread counts, search, the mine / unassigned / all filters, the 24-hour window,
the hand-over flag, notes, assignment, replies (text, template, file, canned), media
served through the session, and who may see what.

The rule, enforced in SQL: an agent sees and works on the conversations assigned to
them and the unassigned queue; a colleague's conversation is refused (403), never
listed; another tenant's ids are not found (404) for every role."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import psycopg
import pytest

from tests import factories
from tests.api_support import TestClient, api_client
from tests.test_bots import Inbox
from tests.test_dashboard_http import CSRF, add_user, csrf_of, login

pytest_plugins = ["tests.sim_fixtures"]

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(range(256)) * 20


@pytest.fixture
def inbox(db: psycopg.Connection) -> Inbox:
    return Inbox.build(db)


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with api_client(db_url) as c:
        yield c


def listed(page: str) -> list[int]:
    return [int(c) for c in re.findall(r'<li data-contact="(\d+)"', page)]


def unread_of(page: str, contact: int) -> int:
    item = re.search(rf'<li data-contact="{contact}".*?</li>', page, re.DOTALL).group(0)
    badge = re.search(r'class="badge unread">(\d+)<', item)
    return int(badge.group(1)) if badge else 0


def receipts(inbox: Inbox) -> list[dict]:
    return [m["b"] for m in inbox.queued() if m["b"].get("status") == "read"]


def seen(client: TestClient, path: str) -> None:
    """What the open thread's page does: htmx posts /read (with the CSRF header) as it loads."""
    page = client.get(path).text
    assert f'hx-post="{path}/read" hx-trigger="load"' in page
    token = re.search(r'"X-CSRF-Token": "([^"]+)"', page).group(1)
    assert client.post(f"{path}/read", headers={"X-CSRF-Token": token}).status_code == 204


def test_unread_counts_are_each_users_own_and_the_window_is_shown(db, inbox: Inbox, db_url: str) -> None:
    add_user(db, inbox.tenant_id, "ana@example.com", "agent")
    add_user(db, inbox.tenant_id, "bob@example.com", "agent")
    who = inbox.sender()
    inbox.say("first", who)
    inbox.say("second", who)
    contact = inbox.contact(who)
    with api_client(db_url) as ana, api_client(db_url) as bob:
        login(ana, "ana@example.com")
        login(bob, "bob@example.com")
        page = ana.get("/dashboard/inbox").text
        assert unread_of(page, contact) == 2 and "open until " in page
        thread = ana.get(f"/dashboard/inbox/{inbox.number_id}/{contact}")
        assert thread.status_code == 200 and 'id="window">Window open until' in thread.text
        seen(ana, f"/dashboard/inbox/{inbox.number_id}/{contact}")
        assert unread_of(ana.get("/dashboard/inbox").text, contact) == 0
        assert unread_of(bob.get("/dashboard/inbox").text, contact) == 2      # bob has not read it
        inbox.say("third", who)
        assert unread_of(ana.get("/dashboard/inbox").text, contact) == 1
        assert unread_of(bob.get("/dashboard/inbox?filter=unread").text, contact) == 3
        assert listed(ana.get("/dashboard/inbox?filter=unread").text) == [contact]
    # A contact who last wrote two days ago: the window shows closed, the reply box is gone.
    old = inbox.sender()
    inbox.say("old news", old, ts=int(time.time()) - 2 * 86400)
    with api_client(db_url) as ana:
        login(ana, "ana@example.com")
        thread = ana.get(f"/dashboard/inbox/{inbox.number_id}/{inbox.contact(old)}").text
        assert "Window closed: templates only" in thread and 'id="reply-text"' not in thread
        assert 'id="window-closed"' in thread


def test_search_finds_phone_name_and_message_text_literally(db, inbox: Inbox, client: TestClient) -> None:
    add_user(db, inbox.tenant_id, "boss@example.com", "admin")
    ana, carl, dora = inbox.sender(), inbox.sender(), inbox.sender()
    inbox.say("where is my parcel?", ana, name="Ana Lima")
    inbox.say("100% sure it broke", carl, name="Carl Diaz")
    inbox.say("hello", dora, name="Dora_Q")
    login(client, "boss@example.com")

    def search(q: str) -> set[int]:
        answer = client.get("/dashboard/inbox", params={"q": q})
        assert answer.status_code == 200
        return set(listed(answer.text))

    assert search("PARCEL") == {inbox.contact(ana)}             # message text, any case
    assert search("diaz") == {inbox.contact(carl)}              # the contact's name
    assert search(dora[-7:]) == {inbox.contact(dora)}           # part of the phone number
    assert search("100%") == {inbox.contact(carl)}              # % is a character, not a wildcard
    assert search("a_Q") == {inbox.contact(dora)} and search("%") == {inbox.contact(carl)}
    assert search("x'; DROP TABLE core.contacts; --") == set()
    assert db.execute("SELECT count(*) FROM core.contacts WHERE tenant_id = %s", (inbox.tenant_id,)).fetchone()[0] == 3
    assert len(search("")) == 3
    assert client.get("/dashboard/inbox", params={"filter": "everything"}).status_code == 400


def test_the_search_can_use_the_trigram_indexes(db) -> None:
    db.execute("SET enable_seqscan = off")
    plans = [" ".join(r[0] for r in db.execute(sql).fetchall()) for sql in (
        "EXPLAIN SELECT contact_id FROM core.inbox_messages WHERE body ILIKE '%parcel%'",
        ("EXPLAIN SELECT contact_id FROM core.contacts WHERE (coalesce(wa_id, '') || ' ' || "
         "coalesce(name, '') || ' ' || coalesce(profile_name, '')) ILIKE '%lima%'"))]
    db.execute("RESET enable_seqscan")
    assert "inbox_messages_body_trgm" in plans[0] and "contacts_search_trgm" in plans[1]


def test_an_agent_lists_and_opens_only_theirs_and_the_queue_and_an_admin_all(db, inbox: Inbox, db_url: str) -> None:
    add_user(db, inbox.tenant_id, "ana@example.com", "agent")
    add_user(db, inbox.tenant_id, "boss@example.com", "admin")
    mine, free, theirs = inbox.sender(), inbox.sender(), inbox.sender()
    for who in (mine, free, theirs):
        inbox.say(f"help me {who}", who)
    for who, agent in ((mine, "ana@example.com"), (theirs, "bob@example.com")):
        db.execute("SELECT api.assign_conversation(%s, %s, %s, %s)",
                   (inbox.tenant_id, inbox.number_id, inbox.contact(who), agent))
    db.execute("UPDATE core.conversations SET needs_human = true, needs_human_reason = 'LLM: timeout' "
               "WHERE contact_id = %s", (inbox.contact(theirs),))      # as a failed LLM job leaves it
    c = inbox.contact
    with api_client(db_url) as ana, api_client(db_url) as boss:
        login(ana, "ana@example.com")
        login(boss, "boss@example.com")
        assert set(listed(ana.get("/dashboard/inbox").text)) == {c(mine), c(free)}
        assert listed(ana.get("/dashboard/inbox?filter=mine").text) == [c(mine)]
        assert listed(ana.get("/dashboard/inbox?filter=unassigned").text) == [c(free)]
        assert listed(ana.get("/dashboard/inbox?filter=needs_human").text) == []
        assert listed(ana.get("/dashboard/inbox", params={"q": theirs}).text) == []
        assert set(listed(boss.get("/dashboard/inbox").text)) == {c(mine), c(free), c(theirs)}
        assert listed(boss.get("/dashboard/inbox?filter=needs_human").text) == [c(theirs)]
        assert listed(boss.get("/dashboard/inbox?filter=mine").text) == []
        other = f"/dashboard/inbox/{inbox.number_id}/{c(theirs)}"
        token = csrf_of(ana, "/dashboard/inbox")
        assert ana.get(other).status_code == 403
        for action, data in (("reply", {"text": "x"}), ("note", {"note": "x"}), ("take", {}),
                             ("handover", {})):
            assert ana.post(f"{other}/{action}", data={"csrf_token": token, **data}).status_code == 403, action
        assert ana.post(f"{other}/assign", data={"csrf_token": token, "user_id": ""}).status_code == 403
        assert db.execute("SELECT assigned_to, needs_human FROM core.conversations WHERE contact_id = %s",
                          (c(theirs),)).fetchone() == ("bob@example.com", True)
        assert db.execute("SELECT count(*) FROM core.conversation_notes").fetchone()[0] == 0
        assert inbox.replies_to(theirs) == []
        # The admin clears the hand-over flag; the conversation stays bob's.
        boss_token = csrf_of(boss, other)
        assert 'id="needs-human"' in boss.get(other).text
        assert boss.post(f"{other}/handover", data={"csrf_token": boss_token},
                         follow_redirects=False).status_code == 303
        assert 'id="needs-human"' not in boss.get(other).text
        assert db.execute("SELECT assigned_to, needs_human FROM core.conversations WHERE contact_id = %s",
                          (c(theirs),)).fetchone() == ("bob@example.com", False)


def test_a_note_shows_in_the_thread_and_never_reaches_whatsapp(db, inbox: Inbox, client: TestClient) -> None:
    add_user(db, inbox.tenant_id, "ana@example.com", "agent")
    who = inbox.sender()
    inbox.say("my order is late", who)
    path = f"/dashboard/inbox/{inbox.number_id}/{inbox.contact(who)}"
    login(client, "ana@example.com")
    token = csrf_of(client, path)
    before = len(inbox.queued())
    done = client.post(f"{path}/note", data={"csrf_token": token, "note": "Customer is VIP <b>x</b>"},
                       follow_redirects=False)
    assert done.status_code == 303
    page = client.get(path).text
    assert re.search(r'class="msg note".*Customer is VIP &lt;b&gt;x&lt;/b&gt;.*ana@example.com', page, re.DOTALL)
    assert len(inbox.queued()) == before        # the read receipt came earlier; nothing for the note
    assert all("VIP" not in str(m) for m in inbox.queued())
    assert client.post(f"{path}/note", data={"csrf_token": token, "note": "   "}).status_code == 400
    assert db.execute("SELECT author, body FROM core.conversation_notes").fetchall() == [
        ("ana@example.com", "Customer is VIP <b>x</b>")]


def test_replies_with_text_and_with_a_template_inside_and_outside_the_window(db, inbox: Inbox,
                                                                           client: TestClient) -> None:
    add_user(db, inbox.tenant_id, "ana@example.com", "agent")
    fresh, old = inbox.sender(), inbox.sender()
    inbox.say("hi", fresh)
    inbox.say("hi from last week", old, ts=int(time.time()) - 7 * 86400)
    login(client, "ana@example.com")
    path = f"/dashboard/inbox/{inbox.number_id}/{inbox.contact(fresh)}"
    page = client.get(path).text
    token = CSRF.search(page).group(1)
    template_id = int(re.search(r'<option value="(\d+)">order_update \(en_US\)', page).group(1))
    fields = client.get(f"{path}/template-fields", params={"template_id": template_id}).text
    assert fields.count('name="param"') == 2 and "your order {{2}} is on its way" in fields
    assert client.post(f"{path}/reply", data={"csrf_token": token, "text": "Hello {{name}}"},
                       follow_redirects=False).status_code == 303
    old_path = f"/dashboard/inbox/{inbox.number_id}/{inbox.contact(old)}"
    closed = client.post(f"{old_path}/reply", data={"csrf_token": token, "text": "late"})
    assert closed.status_code == 422 and "window" in closed.text and "template" in closed.text
    sent = client.post(f"{old_path}/template", data={
        "csrf_token": token, "name": "order_update", "language": "en_US", "format": "POSITIONAL",
        "param_name": ["1", "2"], "param": ["Ana", "A-17"]}, follow_redirects=False)
    assert sent.status_code == 303
    assert inbox.replies_to(fresh) == ["Hello Ana Lima"] and inbox.replies_to(old) == ["template:order_update"]
    body = next(m["b"] for m in inbox.queued() if m["b"].get("to") == old)
    assert [p["text"] for p in body["template"]["components"][0]["parameters"]] == ["Ana", "A-17"]
    short = client.post(f"{old_path}/template", data={
        "csrf_token": token, "name": "order_update", "language": "en_US", "param": ["only one"]})
    assert short.status_code == 422 and "parameter" in short.text


def test_canned_replies_are_the_tenants_own_and_fill_the_reply_box(db, inbox: Inbox, client: TestClient,
                                                                  db_url: str) -> None:
    add_user(db, inbox.tenant_id, "ana@example.com", "agent")
    other = factories.account(db)
    add_user(db, other.tenant_id, "eve@example.com", "admin")
    theirs = db.execute("SELECT canned_reply_id FROM api.create_canned_reply(%s, NULL, 'Secret', 'eve only')",
                        (other.tenant_id,)).fetchone()[0]
    who = inbox.sender()
    inbox.say("hello", who)
    login(client, "ana@example.com")
    token = csrf_of(client, "/dashboard/inbox/canned")
    made = client.post("/dashboard/inbox/canned", data={"csrf_token": token, "title": "Shipping",
                                                        "body": "Hi {{name}}, it ships in 2 days."},
                       follow_redirects=False)
    assert made.status_code == 303
    again = client.post("/dashboard/inbox/canned", data={"csrf_token": token, "title": "Shipping", "body": "x"})
    assert again.status_code == 409
    mine = db.execute("SELECT canned_reply_id FROM core.canned_replies WHERE tenant_id = %s",
                      (inbox.tenant_id,)).fetchone()[0]
    page = client.get(f"/dashboard/inbox/{inbox.number_id}/{inbox.contact(who)}").text
    assert f'<option value="{mine}">Shipping</option>' in page and "Secret" not in page
    filled = client.get(f"/dashboard/inbox/canned/{mine}/fill")
    assert filled.status_code == 200 and 'id="reply-text"' in filled.text and "it ships in 2 days." in filled.text
    assert client.get(f"/dashboard/inbox/canned/{theirs}/fill").status_code == 404
    assert client.post(f"/dashboard/inbox/canned/{theirs}/delete", data={"csrf_token": token}).status_code == 404
    assert client.post(f"/dashboard/inbox/canned/{mine}/delete", data={"csrf_token": token},
                       follow_redirects=False).status_code == 303
    assert db.execute("SELECT title FROM core.canned_replies").fetchall() == [("Secret",)]
    with api_client(db_url) as viewer:
        add_user(db, inbox.tenant_id, "val@example.com", "viewer")
        login(viewer, "val@example.com")
        assert viewer.get("/dashboard/inbox/canned").status_code == 403


def test_an_admin_assigns_to_an_agent_and_an_agent_may_not(db, inbox: Inbox, db_url: str) -> None:
    ana = add_user(db, inbox.tenant_id, "ana@example.com", "agent")
    add_user(db, inbox.tenant_id, "boss@example.com", "admin")
    mark = add_user(db, inbox.tenant_id, "mark@example.com", "marketer")
    other = factories.account(db)
    eve = add_user(db, other.tenant_id, "eve@example.com", "agent")
    who = inbox.sender()
    inbox.say("hello", who)
    path = f"/dashboard/inbox/{inbox.number_id}/{inbox.contact(who)}"

    def assigned() -> str | None:
        return db.execute("SELECT assigned_to FROM core.conversations WHERE contact_id = %s",
                          (inbox.contact(who),)).fetchone()[0]

    with api_client(db_url) as boss, api_client(db_url) as agent:
        login(boss, "boss@example.com")
        login(agent, "ana@example.com")
        page = boss.get(path).text
        token = CSRF.search(page).group(1)
        assert f'<option value="{ana}"' in page and f'<option value="{mark}"' not in page
        assert boss.post(f"{path}/assign", data={"csrf_token": token, "user_id": str(ana)},
                         follow_redirects=False).status_code == 303
        assert assigned() == "ana@example.com"
        assert "Assigned to ana@example.com" in agent.get(path).text
        for user in (eve, mark):     # another tenant's user; a role that does not answer
            assert boss.post(f"{path}/assign", data={"csrf_token": token, "user_id": str(user)}).status_code == 404
        agent_token = csrf_of(agent, path)
        assert 'id="assignee"' not in agent.get(path).text
        assert agent.post(f"{path}/assign", data={"csrf_token": agent_token, "user_id": ""}).status_code == 403
        assert assigned() == "ana@example.com"
        assert boss.post(f"{path}/assign", data={"csrf_token": token, "user_id": ""},
                         follow_redirects=False).status_code == 303
        assert assigned() is None


def test_tenant_b_cannot_read_reply_note_assign_or_see_media_of_tenant_a(db, inbox: Inbox, db_url: str,
                                                                        sim, tmp_path) -> None:
    add_user(db, inbox.tenant_id, "ana@example.com", "agent")
    other = factories.account(db)
    add_user(db, other.tenant_id, "eve@example.com", "admin")
    who = inbox.sender()
    inbox.say("private", who)
    path = f"/dashboard/inbox/{inbox.number_id}/{inbox.contact(who)}"
    with api_client(db_url, graph_base_url=sim.url, media_dir=str(tmp_path)) as ana, \
            api_client(db_url, graph_base_url=sim.url, media_dir=str(tmp_path)) as eve:
        login(ana, "ana@example.com")
        token = csrf_of(ana, path)
        # A file reply: uploaded to Meta (the simulator), sent by its id, shown inline.
        sent = ana.post(f"{path}/reply", data={"csrf_token": token, "text": "your receipt"},
                        files={"file": ("receipt.jpg", JPEG, "image/jpeg")}, follow_redirects=False)
        assert sent.status_code == 303, sent.text
        body = next(m["b"] for m in inbox.queued() if m["b"].get("type") == "image")
        assert body["image"]["id"] and body["image"]["caption"] == "your receipt"
        page = ana.get(path).text
        media_id = int(re.search(rf'<img src="{path}/media/(\d+)"', page).group(1))
        image = ana.get(f"{path}/media/{media_id}")
        assert image.status_code == 200 and image.content == JPEG
        assert image.headers["content-type"] == "image/jpeg" and image.headers["x-content-type-options"] == "nosniff"
        assert image.headers["content-security-policy"] == "default-src 'none'; sandbox"
        # A file of a conversation a colleague holds is refused to an agent, as the thread is.
        db.execute("SELECT api.assign_conversation(%s, %s, %s, 'bob@example.com')",
                   (inbox.tenant_id, inbox.number_id, inbox.contact(who)))
        assert ana.get(f"{path}/media/{media_id}").status_code == 403
        db.execute("SELECT api.release_conversation(%s, %s, %s)", (inbox.tenant_id, inbox.number_id, inbox.contact(who)))
        assert ana.get(f"{path}/media/{media_id}").status_code == 200

        login(eve, "eve@example.com")
        eve_token = csrf_of(eve, "/dashboard/inbox")
        assert eve.get(path).status_code == 404
        assert eve.get(f"{path}/media/{media_id}").status_code == 404
        eve_path = f"/dashboard/inbox/{other.number_id}/{media_id}"      # her own number, any contact id
        assert eve.get(f"{eve_path}/media/{media_id}").status_code == 404
        for action, data in (("reply", {"text": "x"}), ("note", {"note": "x"}), ("take", {}),
                             ("assign", {"user_id": ""}), ("handover", {})):
            assert eve.post(f"{path}/{action}", data={"csrf_token": eve_token, **data}).status_code == 404, action
        assert eve.get(f"/dashboard/inbox?number_id={inbox.number_id}").status_code == 404
        assert listed(eve.get("/dashboard/inbox", params={"q": "private"}).text) == []
    assert [m["b"]["type"] for m in inbox.queued() if m["b"].get("to") == who] == ["image"]   # nothing from eve
    assert db.execute("SELECT count(*) FROM core.conversation_notes").fetchone()[0] == 0
    assert db.execute("SELECT assigned_to FROM core.conversations WHERE contact_id = %s",
                      (inbox.contact(who),)).fetchone()[0] is None


def test_getting_a_thread_changes_nothing_and_reading_is_a_post_with_csrf(db, inbox: Inbox, db_url: str) -> None:
    add_user(db, inbox.tenant_id, "ana@example.com", "agent")
    add_user(db, inbox.tenant_id, "vic@example.com", "viewer")
    who = inbox.sender()
    inbox.say("first", who)
    inbox.say("second", who)
    contact = inbox.contact(who)
    path = f"/dashboard/inbox/{inbox.number_id}/{contact}"
    with api_client(db_url) as ana, api_client(db_url) as vic:
        login(ana, "ana@example.com")
        login(vic, "vic@example.com")
        # A GET (a prefetch, a link preview, a cross-site <img>) reads without marking or receipts.
        for _ in range(2):
            assert ana.get(path).status_code == 200 and ana.get(f"{path}?fragment=1").status_code == 200
        assert receipts(inbox) == []
        assert unread_of(ana.get("/dashboard/inbox").text, contact) == 2
        assert db.execute("SELECT count(*) FROM core.conversation_reads").fetchone()[0] == 0
        assert db.execute("SELECT unread FROM core.conversations WHERE contact_id = %s", (contact,)).fetchone()[0] == 2
        # The POST without the session's CSRF token (a cross-site form) is refused and changes nothing.
        assert ana.post(f"{path}/read").status_code == 403
        assert ana.post(f"{path}/read", headers={"X-CSRF-Token": "forged"}).status_code == 403
        assert receipts(inbox) == [] and unread_of(ana.get("/dashboard/inbox").text, contact) == 2
        # A viewer's read moves their own mark only: no receipt to Meta.
        seen(vic, path)
        assert receipts(inbox) == [] and unread_of(vic.get("/dashboard/inbox").text, contact) == 0
        # The agent's: their mark, and Meta's receipt once.
        seen(ana, path)
        assert len(receipts(inbox)) == 1 and unread_of(ana.get("/dashboard/inbox").text, contact) == 0
        assert 'id="mark-read"' not in ana.get(path).text          # nothing left to mark
        token = csrf_of(ana, path)
        assert ana.post(f"{path}/read", headers={"X-CSRF-Token": token}).status_code == 204
        assert len(receipts(inbox)) == 1


def test_an_agent_cannot_fetch_a_colleagues_upload_by_any_path(db, inbox: Inbox, db_url: str, sim, tmp_path) -> None:
    add_user(db, inbox.tenant_id, "ana@example.com", "agent")
    add_user(db, inbox.tenant_id, "bob@example.com", "agent")
    add_user(db, inbox.tenant_id, "boss@example.com", "admin")
    hers, his = inbox.sender(), inbox.sender()
    inbox.say("send me the invoice", hers)
    inbox.say("hello", his)
    path = f"/dashboard/inbox/{inbox.number_id}/{inbox.contact(hers)}"
    bobs = f"/dashboard/inbox/{inbox.number_id}/{inbox.contact(his)}"
    options = {"graph_base_url": sim.url, "media_dir": str(tmp_path)}
    with api_client(db_url, **options) as ana, api_client(db_url, **options) as bob, \
            api_client(db_url, **options) as boss:
        for client, email in ((ana, "ana@example.com"), (bob, "bob@example.com"), (boss, "boss@example.com")):
            login(client, email)
        token = csrf_of(ana, path)
        assert ana.post(f"{path}/take", data={"csrf_token": token}, follow_redirects=False).status_code == 303
        sent = ana.post(f"{path}/reply", data={"csrf_token": token, "text": "invoice"},
                        files={"file": ("invoice.jpg", JPEG, "image/jpeg")}, follow_redirects=False)
        assert sent.status_code == 303, sent.text
        media_id = int(re.search(rf'<img src="{path}/media/(\d+)"', ana.get(path).text).group(1))
        assert ana.get(f"{path}/media/{media_id}").content == JPEG
        assert boss.get(f"{path}/media/{media_id}").content == JPEG      # an admin sees every conversation
        # bob: not through ana's conversation (403, as its thread), nor through his own, where
        # the file does not show (404), nor by the file id alone (no such route any more).
        assert bob.get(path).status_code == 403
        assert bob.get(f"{path}/media/{media_id}").status_code == 403
        assert bob.get(f"{bobs}/media/{media_id}").status_code == 404
        assert bob.get(f"/dashboard/media/{media_id}").status_code == 404
        # Nor the admin through a conversation the file is not in.
        assert boss.get(f"{bobs}/media/{media_id}").status_code == 404
    # In SQL, for any caller: an agent's file of a colleague's conversation is not found.
    bob_id = db.execute("SELECT user_id FROM core.dashboard_users WHERE email = 'bob@example.com'").fetchone()[0]
    with pytest.raises(psycopg.Error) as refused:
        db.execute("SELECT * FROM api.inbox_media_content(%s, %s, %s, %s, %s)",
                   (inbox.tenant_id, bob_id, inbox.number_id, inbox.contact(hers), media_id))
    assert refused.value.diag.sqlstate == "PW245"
    db.rollback()
