"""Media over HTTP, end to end: uploads through the API reach the simulator (Meta's
``/{phone-number-id}/media``) and are reused; an image a contact sends is downloaded by
the worker's media loop through the two-step media API and served back byte for byte to
the tenant's keys only; files outside Meta's limits are refused naming the field; the
access token appears in no log, answer or stored error."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time

import psycopg
import pytest
from psycopg.rows import dict_row

from pgwa.config import Settings
from pgwa.queries import queries
from tests.api_support import api_client
from tests.test_bots import Inbox, _run_sender, sim_inbound
from worker.media import MediaDownloader

try:
    from sim_fixtures import NUMBERS, VERSION
except ImportError:
    from tests.sim_fixtures import NUMBERS, VERSION

pytest_plugins = ["sim_fixtures"] if __package__ in (None, "") else ["tests.sim_fixtures"]

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(range(256)) * 20
TOKENS = [n["token"] for n in NUMBERS]


def key_for(db: psycopg.Connection, tenant_id: int, scope: str = "admin") -> dict[str, str]:
    with db.cursor(row_factory=dict_row) as cur:
        key = cur.execute(queries["create_api_key"], {
            "tenant_id": tenant_id, "name": "media", "scope": scope, "expires_at": None,
            "rate_limit_per_minute": None}).fetchone()["key"]
    return {"Authorization": f"Bearer {key}"}


def no_token_in(*texts: str) -> None:
    for text in texts:
        for token in TOKENS:
            assert token not in text


@pytest.fixture
def inbox(db: psycopg.Connection) -> Inbox:
    return Inbox.build(db)


@pytest.fixture(autouse=True)
def _logs(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    yield
    no_token_in(caplog.text)


def upload(client, headers, number_id: int, data: bytes = JPEG, mime: str = "image/jpeg", name: str = "shop.jpg"):
    return client.post("/v1/media", headers=headers, data={"number_id": str(number_id)},
                       files={"file": (name, data, mime)})


def test_an_upload_reaches_the_simulator_is_reused_and_sent_by_id(inbox: Inbox, db_url: str, sim, sim_receiver,
                                                                  tmp_path) -> None:
    headers = key_for(inbox.db, inbox.tenant_id)
    with api_client(db_url, graph_base_url=sim.url, media_dir=str(tmp_path)) as client:
        first = upload(client, headers, inbox.number_id)
        assert first.status_code == 201, first.text
        media = first.json()
        assert media["reused"] is False and media["media_type"] == "image" and media["mime_type"] == "image/jpeg"
        assert media["sha256"] == hashlib.sha256(JPEG).hexdigest() and media["size_bytes"] == len(JPEG)
        held = sim.http.get("/_sim/media").json()["media"]
        [at_sim] = [m for m in held if m["id"] == media["meta_media_id"]]
        assert at_sim["sha256"] == media["sha256"] and at_sim["phone_number_id"] == inbox.pnid
        # The same bytes again: the same media, nothing uploaded.
        again = upload(client, headers, inbox.number_id, name="other-name.jpg")
        assert again.status_code == 200 and again.json()["media_id"] == media["media_id"]
        assert again.json()["reused"] is True
        held = sim.http.get("/_sim/media").json()["media"]
        assert len([m for m in held if m["sha256"] == media["sha256"]]) == 1
        listed = client.get("/v1/media", headers=headers).json()
        assert [m["media_id"] for m in listed["data"]] == [media["media_id"]]
        content = client.get(f"/v1/media/{media['media_id']}/content", headers=headers)
        assert content.status_code == 200 and content.content == JPEG
        assert content.headers["content-type"] == "image/jpeg"
        # An agent sends it by its pgwa id: the simulator receives Meta's id, and accepts it.
        alice = inbox.sender()
        sim_inbound(inbox, sim, sim_receiver, alice, "send me the photo")    # the simulator's window opens
        contact = inbox.contact(alice)
        sent = client.post(f"/v1/numbers/{inbox.number_id}/conversations/{contact}/reply", headers=headers,
                           json={"type": "image", "media": media["media_id"], "caption": "Here it is"})
        assert sent.status_code == 201, sent.text
        outbound_id = sent.json()["outbound_id"]
    asyncio.run(_run_sender(db_url, sim.url, "SELECT state = 'accepted' FROM core.outbound_messages "
                            "WHERE outbound_id = %s", (outbound_id,)))
    # The simulator checks a media id at send (it must be its WABA's, of an image type).
    assert [(e["to"], e["type"]) for e in sim.ledger(0)] == [(alice, "image")]
    body = inbox.db.execute("SELECT payload FROM core.inbox_messages WHERE outbound_id = %s",
                            (outbound_id,)).fetchone()[0]
    assert body["image"] == {"id": media["meta_media_id"], "caption": "Here it is"}


def test_a_file_outside_metas_limits_is_refused_naming_the_field(inbox: Inbox, db_url: str, sim, tmp_path) -> None:
    headers = key_for(inbox.db, inbox.tenant_id)
    with api_client(db_url, graph_base_url=sim.url, media_dir=str(tmp_path)) as client:
        gif = upload(client, headers, inbox.number_id, b"GIF89a" + b"x" * 100, "image/gif", "a.gif")
        assert gif.status_code == 415
        error = gif.json()["error"]
        assert error["code"] == "PW146" and "file" in error["message"] and "image/gif" in error["message"]
        assert "image/jpeg" in error["hint"]
        big = upload(client, headers, inbox.number_id, b"\xff\xd8" + b"x" * (5 << 20), "image/jpeg", "big.jpg")
        assert big.status_code == 413
        error = big.json()["error"]
        assert error["code"] == "PW145" and "file" in error["message"] and str(5 << 20) in error["message"]
        other = Inbox.build(inbox.db, NUMBERS[2])      # another tenant's number
        assert upload(client, headers, other.number_id).status_code == 404
        read_only = key_for(inbox.db, inbox.tenant_id, "read")
        assert upload(client, read_only, inbox.number_id).status_code == 403
        no_token_in(gif.text, big.text)
    held = sim.http.get("/_sim/media").json()["media"]
    assert held == []


async def _download_until(db_url: str, sim_url: str, media_dir: str, media_id: int, timeout: float = 20) -> str:
    loop = MediaDownloader(Settings(database_url=db_url, graph_base_url=sim_url, media_dir=media_dir,
                                    worker_name="media-test"), heartbeat_s=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            deadline = time.monotonic() + timeout
            while True:
                state = (await (await conn.execute("SELECT state FROM core.media WHERE media_id = %s",
                                                   (media_id,))).fetchone())[0]
                if state in ("stored", "failed"):
                    return state
                assert time.monotonic() < deadline, f"still {state}: {loop.totals}"
                assert not task.done(), task.result()
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task


def _inbound(inbox: Inbox, sim, sim_receiver, wa_id: str, media: dict) -> dict:
    before = len(sim_receiver.messages())
    facts = sim.control("inbound", {"phone_number_id": inbox.pnid, "from": wa_id, "media": media, "name": "Ana"})
    sim_receiver.wait_for(lambda r: len(r.messages()) > before, what="the inbound webhook")
    with sim_receiver.lock:
        posts = [p["json"] for p in sim_receiver.posts]
    sim_receiver.clear()
    inbox.deliver(*posts)
    return facts


def test_an_inbound_image_is_downloaded_and_served_to_its_tenant_only(
        inbox: Inbox, db_url: str, sim, sim_receiver, tmp_path) -> None:
    alice = inbox.sender()
    facts = _inbound(inbox, sim, sim_receiver, alice, {"type": "image", "mime_type": "image/jpeg",
                                                       "content_b64": base64.b64encode(JPEG).decode(),
                                                       "caption": "my receipt"})
    media_id = inbox.db.execute("SELECT media_id FROM core.media WHERE meta_media_id = %s",
                                (facts["media_id"],)).fetchone()[0]
    assert asyncio.run(_download_until(db_url, sim.url, str(tmp_path), media_id)) == "stored"
    headers = key_for(inbox.db, inbox.tenant_id, "read")
    other = Inbox.build(inbox.db, NUMBERS[2])
    with api_client(db_url, graph_base_url=sim.url, media_dir=str(tmp_path)) as client:
        content = client.get(f"/v1/media/{media_id}/content", headers=headers)
        assert content.status_code == 200 and content.content == JPEG
        assert content.headers["content-type"] == "image/jpeg"
        # Another tenant's key: not found, as if it did not exist.
        theirs = client.get(f"/v1/media/{media_id}/content", headers=key_for(inbox.db, other.tenant_id))
        assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "PW245"
        # The conversation shows the media, its state and where to fetch it.
        contact = inbox.contact(alice)
        page = client.get(f"/v1/numbers/{inbox.number_id}/conversations/{contact}/messages", headers=headers).json()
        [msg] = [m for m in page["data"] if m["direction"] == "in"]
        assert msg["type"] == "image" and msg["body"] == "my receipt"
        assert msg["media"]["media_id"] == media_id and msg["media"]["state"] == "stored"
        assert msg["media"]["caption"] == "my receipt" and msg["media"]["mime_type"] == "image/jpeg"
        assert msg["media"]["content_url"] == f"/v1/media/{media_id}/content"
        listed = client.get("/v1/media?direction=in", headers=headers).json()["data"]
        assert [(m["media_id"], m["state"], m["sha256"]) for m in listed] == [
            (media_id, "stored", hashlib.sha256(JPEG).hexdigest())]


def test_a_download_meta_refuses_is_recorded_without_the_token(inbox: Inbox, db_url: str, sim, sim_receiver,
                                                               tmp_path) -> None:
    facts = _inbound(inbox, sim, sim_receiver, inbox.sender(), {"type": "document", "mime_type": "application/pdf",
                                                                "size": 4096, "filename": "invoice.pdf"})
    # Meta forgot the file (deleted): the id is unknown, a permanent refusal.
    gone = sim.http.delete(f"/{VERSION}/{facts['media_id']}",
                           headers={"Authorization": f"Bearer {NUMBERS[0]['token']}"})
    assert gone.status_code == 200
    media_id = inbox.db.execute("SELECT media_id FROM core.media WHERE meta_media_id = %s",
                                (facts["media_id"],)).fetchone()[0]
    assert asyncio.run(_download_until(db_url, sim.url, str(tmp_path), media_id)) == "failed"
    error = inbox.db.execute("SELECT last_error FROM core.media WHERE media_id = %s", (media_id,)).fetchone()[0]
    assert "Graph API error" in error
    no_token_in(error)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_stored_file_is_refused_as_content_to_another_tenant_and_the_row_is_untouched(
        inbox: Inbox, db_url: str, sim, tmp_path) -> None:
    other = Inbox.build(inbox.db, NUMBERS[2])
    headers = key_for(inbox.db, inbox.tenant_id)
    with api_client(db_url, graph_base_url=sim.url, media_dir=str(tmp_path)) as client:
        media = upload(client, headers, inbox.number_id).json()
        theirs = key_for(inbox.db, other.tenant_id)
        assert client.get(f"/v1/media/{media['media_id']}/content", headers=theirs).status_code == 404
        assert client.get("/v1/media", headers=theirs).json()["data"] == []
        # A reply of tenant B cannot send tenant A's upload either.
        bob = other.sender()
        other.say("hi", bob)
        sent = client.post(f"/v1/numbers/{other.number_id}/conversations/{other.contact(bob)}/reply", headers=theirs,
                           json={"type": "image", "media": media["media_id"]})
        assert sent.status_code == 404 and sent.json()["error"]["code"] == "PW245"
    assert inbox.db.execute("SELECT count(*) FROM core.outbound_messages").fetchone()[0] == 0


def test_the_cli_uploads_a_file_reuses_it_and_lists_it(inbox: Inbox, db_url: str, sim, tmp_path, monkeypatch,
                                                        capsys) -> None:
    from pgwa.cli import main

    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("GRAPH_BASE_URL", sim.url)
    monkeypatch.setenv("PGWA_MEDIA_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("COLUMNS", "200")     # the table whole
    photo = tmp_path / "shop.jpg"
    photo.write_bytes(JPEG)
    args = ["media", "upload", str(photo), "--tenant", str(inbox.tenant_id), "--number", inbox.pnid]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "image image/jpeg" in first and "reused" not in first
    assert main(args) == 0
    assert "reused" in capsys.readouterr().out
    assert len(sim.http.get("/_sim/media").json()["media"]) == 1
    assert main(["media", "list", "--tenant", str(inbox.tenant_id)]) == 0
    listed = capsys.readouterr().out
    assert "shop.jpg" in listed and "uploaded" in listed
    stored = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert [p.read_bytes() for p in stored] == [JPEG]
    gif = tmp_path / "a.gif"
    gif.write_bytes(b"GIF89a...")
    assert main(["media", "upload", str(gif), "--tenant", str(inbox.tenant_id), "--number", inbox.pnid]) == 1
    err = capsys.readouterr().err
    assert "PW146" in err and "image/gif" in err
    no_token_in(first, listed, err)


def test_an_inbound_file_over_metas_limit_is_given_up_naming_the_limit(inbox: Inbox, db_url: str, sim,
                                                                       sim_receiver, tmp_path) -> None:
    facts = _inbound(inbox, sim, sim_receiver, inbox.sender(), {"type": "sticker", "mime_type": "image/webp",
                                                                "size": 600 << 10, "animated": True})
    media_id = inbox.db.execute("SELECT media_id FROM core.media WHERE meta_media_id = %s",
                                (facts["media_id"],)).fetchone()[0]
    assert asyncio.run(_download_until(db_url, sim.url, str(tmp_path), media_id)) == "failed"
    row = inbox.db.execute("SELECT attempts, last_error, storage_key FROM core.media WHERE media_id = %s",
                           (media_id,)).fetchone()
    assert row[0] == 1 and str(500 << 10) in row[1] and "sticker" in row[1] and row[2] is None
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
