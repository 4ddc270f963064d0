"""The simulator's media surface: upload, the two-step download, delete and expiry on the
sim clock; sends that name media by id; inbound media a client downloads like Meta's."""

from __future__ import annotations

import base64
import hashlib

import pytest

from tests.sim_fixtures import NUMBERS, VERSION

ONE, TWO, THREE = (n["phone_number_id"] for n in NUMBERS)
UK = "447700900321"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 8
PDF = b"%PDF-1.4\n" + b"0" * 500


def auth(token: str = "tok-one") -> dict:
    return {"Authorization": f"Bearer {token}"}


def upload(sim, data: bytes = JPEG, mime: str = "image/jpeg", pnid: str = ONE,
           token: str = "tok-one", fields: dict | None = None):
    form = {"messaging_product": "whatsapp", "type": mime} if fields is None else fields
    return sim.http.post(f"/{VERSION}/{pnid}/media", data=form, headers=auth(token),
                         files={"file": ("photo.jpg", data, mime)})


def media_id(sim, **kwargs) -> str:
    resp = upload(sim, **kwargs)
    assert resp.status_code == 200, resp.text
    return resp.json()["id"]


def info(sim, mid: str, token: str = "tok-one", **params):
    return sim.http.get(f"/{VERSION}/{mid}", headers=auth(token), params=params or None)


def graph_error(resp, code: int, subcode: int | None = None) -> dict:
    assert resp.status_code in (400, 401), resp.text
    err = resp.json()["error"]
    assert err["code"] == code, err
    if subcode is not None:
        assert err.get("error_subcode") == subcode, err
    return err


def open_window(sim, to: str = UK, pnid: str = ONE) -> None:
    sim.control("inbound", {"phone_number_id": pnid, "from": to, "text": "hi"})


def media_message(kind: str, obj: dict, to: str = UK) -> dict:
    return {"messaging_product": "whatsapp", "to": to, "type": kind, kind: obj}


# --- upload, retrieve, download ------------------------------------------------------------

def test_upload_then_the_two_step_download_gives_back_the_bytes(sim):
    mid = media_id(sim)
    resp = info(sim, mid)
    assert resp.status_code == 200
    body = resp.json()
    assert body == {"messaging_product": "whatsapp", "url": body["url"], "mime_type": "image/jpeg",
                    "sha256": hashlib.sha256(JPEG).hexdigest(), "file_size": len(JPEG), "id": mid}
    assert "/whatsapp_business/attachments/?mid=" + mid in body["url"]
    got = sim.http.get(body["url"], headers=auth())
    assert got.status_code == 200 and got.content == JPEG
    assert got.headers["content-type"] == "image/jpeg"
    # Any token of the owning WABA reads it (TWO shares ONE's WABA), and may name the number.
    assert sim.http.get(body["url"], headers=auth("tok-two")).content == JPEG
    assert info(sim, mid, phone_number_id=ONE).status_code == 200


def test_media_of_one_business_is_invisible_to_another(sim):
    mid = media_id(sim)
    url = info(sim, mid).json()["url"]
    graph_error(info(sim, mid, token="tok-three"), 100, 33)
    graph_error(info(sim, mid, phone_number_id=TWO), 100, 33)
    assert sim.http.get(url, headers=auth("tok-three")).status_code == 404
    assert sim.http.get(url).status_code == 401
    graph_error(sim.http.delete(f"/{VERSION}/{mid}", headers=auth("tok-three")), 100, 33)
    assert info(sim, mid).status_code == 200          # still there for its owner


def test_a_download_url_lives_5_minutes_on_the_sim_clock(sim):
    sim.clock(frozen=True)
    mid = media_id(sim)
    url = info(sim, mid).json()["url"]
    sim.clock(advance_s=299)
    assert sim.http.get(url, headers=auth()).status_code == 200
    sim.clock(advance_s=2)
    assert sim.http.get(url, headers=auth()).status_code == 404
    fresh = info(sim, mid).json()["url"]
    assert fresh != url and sim.http.get(fresh, headers=auth()).content == JPEG


def test_uploaded_media_expires_after_30_days(sim):
    sim.clock(frozen=True)
    mid = media_id(sim)
    sim.clock(advance_s=30 * 86400 - 10)
    assert info(sim, mid).status_code == 200
    sim.clock(advance_s=11)
    graph_error(info(sim, mid), 100, 33)
    open_window(sim)
    error = sim.send(media_message("image", {"id": mid}))
    assert graph_error(error, 131053)["error_data"]["details"].startswith(f"Media id {mid}")


def test_delete_removes_the_media(sim):
    mid = media_id(sim)
    url = info(sim, mid).json()["url"]
    resp = sim.http.delete(f"/{VERSION}/{mid}", headers=auth())
    assert resp.status_code == 200 and resp.json() == {"success": True}
    graph_error(info(sim, mid), 100, 33)
    assert sim.http.get(url, headers=auth()).status_code == 404
    graph_error(sim.http.delete(f"/{VERSION}/{mid}", headers=auth()), 100, 33)


@pytest.mark.parametrize("mime,size,code,words", [
    ("image/gif", 100, 100, "Param file must be a file with one of the following types"),
    ("image/jpeg", 5 * 1024 * 1024 + 1, 131053, "at most 5 MB"),
    ("image/webp", 500 * 1024 + 1, 131053, "at most 500 KB"),
    ("audio/ogg; codecs=opus", 16 * 1024 * 1024 + 1, 131053, "at most 16 MB"),
])
def test_uploads_are_checked_against_metas_types_and_sizes(sim, mime, size, code, words):
    err = graph_error(upload(sim, data=b"x" * size, mime=mime), code)
    assert words in (err["message"] + err.get("error_data", {}).get("details", ""))


def test_every_supported_kind_uploads(sim):
    for mime in ("image/png", "video/mp4", "audio/ogg; codecs=opus", "application/pdf",
                 "image/webp", "text/plain"):
        assert upload(sim, data=b"data", mime=mime).status_code == 200, mime
    assert len(sim.http.get("/_sim/media").json()["media"]) == 6


def test_an_upload_needs_the_numbers_token_and_metas_fields(sim):
    graph_error(upload(sim, token="nope"), 190)
    graph_error(upload(sim, token="tok-three"), 100, 33)
    graph_error(upload(sim, fields={"type": "image/jpeg"}), 100)
    nofile = sim.http.post(f"/{VERSION}/{ONE}/media", headers=auth(),
                           files={"messaging_product": (None, "whatsapp")})
    assert "file" in graph_error(nofile, 100)["error_data"]["details"]
    assert sim.http.get("/_sim/media").json()["media"] == []


# --- sends that name media ----------------------------------------------------------------

def test_media_messages_by_id_must_name_media_of_the_senders_waba(sim):
    open_window(sim)
    open_window(sim, pnid=THREE)
    mid = media_id(sim)
    assert sim.send(media_message("image", {"id": mid, "caption": "x"})).status_code == 200
    open_window(sim, pnid=TWO)      # TWO shares ONE's WABA, so its media
    assert sim.send(media_message("image", {"id": mid}), pnid=TWO).status_code == 200
    graph_error(sim.send(media_message("image", {"id": mid}), pnid=THREE), 131053)
    graph_error(sim.send(media_message("image", {"id": "123456"})), 131053)
    wrong_kind = graph_error(sim.send(media_message("video", {"id": mid})), 131053)
    assert "image/jpeg" in wrong_kind["error_data"]["details"]
    assert sim.send(media_message("document", {"link": "https://cdn.example.com/a.pdf",
                                               "filename": "a.pdf"})).status_code == 200


@pytest.mark.usefixtures("quiet_world")
def test_a_media_message_link_the_fetcher_cannot_get_fails_later(sim, sim_receiver):
    open_window(sim)
    resp = sim.send(media_message("image", {"link": "https://cdn.example.com/broken.jpg/broken"}))
    wamid = resp.json()["messages"][0]["id"]
    failed = sim_receiver.wait_for(lambda r: [s for s in r.statuses() if s["id"] == wamid],
                                   what="the failed status")
    assert failed[0]["status"] == "failed" and failed[0]["errors"][0]["code"] == 131053


def test_template_media_headers_by_uploaded_id(sim):
    image, pdf = media_id(sim), media_id(sim, data=PDF, mime="application/pdf")

    def spring(ref: dict):
        comps = [{"type": "header", "parameters": [{"type": "image", "image": ref}]},
                 {"type": "body", "parameters": [
                     {"type": "text", "parameter_name": n, "text": v}
                     for n, v in (("first_name", "Ana"), ("discount", "20%"), ("end_date", "May"))]},
                 {"type": "button", "sub_type": "url", "index": "0",
                  "parameters": [{"type": "text", "text": "ana"}]}]
        return sim.send({"messaging_product": "whatsapp", "to": UK, "type": "template",
                         "template": {"name": "spring_sale", "language": {"code": "en_US"},
                                      "components": comps}})

    assert spring({"id": image}).status_code == 200
    assert "application/pdf" in graph_error(spring({"id": pdf}), 131053)["error_data"]["details"]
    graph_error(spring({"id": "999"}), 131053)


# --- inbound media ----------------------------------------------------------------------------

@pytest.mark.parametrize("spec,expected", [
    ({"type": "image", "caption": "Damaged box"},
     {"caption": "Damaged box", "mime_type": "image/jpeg"}),
    ({"type": "audio"}, {"mime_type": "audio/ogg; codecs=opus", "voice": True}),
    ({"type": "audio", "voice": False}, {"mime_type": "audio/mpeg", "voice": False}),
    ({"type": "video", "caption": "unboxing"}, {"caption": "unboxing", "mime_type": "video/mp4"}),
    ({"type": "document", "filename": "invoice.pdf", "caption": "my invoice"},
     {"caption": "my invoice", "filename": "invoice.pdf", "mime_type": "application/pdf"}),
    ({"type": "sticker", "animated": True}, {"mime_type": "image/webp", "animated": True}),
])
def test_inbound_media_comes_with_an_id_the_media_api_serves(sim, sim_receiver, spec, expected):
    resp = sim.control("inbound", {"phone_number_id": ONE, "from": UK, "media": spec})
    kind = spec["type"]
    messages = sim_receiver.wait_for(lambda r: r.messages(), what="the media message")
    assert len(messages) == 1 and messages[0]["type"] == kind and messages[0]["id"] == resp["wamid"]
    obj = messages[0][kind]
    assert obj == {**expected, "sha256": obj["sha256"], "id": resp["media_id"]}
    node = info(sim, obj["id"]).json()
    assert node["mime_type"] == expected["mime_type"] and node["file_size"] == resp["file_size"] == 2048
    data = sim.http.get(node["url"], headers=auth()).content
    digest = hashlib.sha256(data).digest()
    assert base64.b64decode(obj["sha256"]) == digest and node["sha256"] == digest.hex() == resp["sha256"]


def test_inbound_media_carries_given_bytes_and_expires_after_7_days(sim, sim_receiver):
    sim.clock(frozen=True)
    resp = sim.control("inbound", {"phone_number_id": ONE, "from": UK, "media": {
        "type": "document", "mime_type": "text/csv", "filename": "list.csv",
        "content_b64": base64.b64encode(b"a,b\n1,2\n").decode()}})
    node = info(sim, resp["media_id"]).json()
    assert node["mime_type"] == "text/csv" and node["file_size"] == 8
    download = sim.http.get(node["url"], headers=auth())
    assert download.content == b"a,b\n1,2\n"
    assert download.headers["content-disposition"] == 'attachment; filename="list.csv"'
    graph_error(info(sim, resp["media_id"], token="tok-three"), 100, 33)
    sim.clock(advance_s=7 * 86400)
    graph_error(info(sim, resp["media_id"]), 100, 33)


def test_inbound_media_control_checks_its_input(sim):
    for media in ({"type": "gif"}, {"type": "image", "content_b64": "!!"}, {"type": "image", "size": 0}):
        resp = sim.http.post("/_sim/inbound", json={"phone_number_id": ONE, "from": UK,
                                                    "media": media})
        assert resp.status_code == 400, media
