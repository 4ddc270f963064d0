"""The send API end to end: POST /v1/messages over HTTP, the worker sends, the simulator
checks every template component as Meta does (sim/templates.py) and answers.

The templates are the simulator's seeded ones, synced through the Graph API; a recording
proxy (tests/test_template_campaigns.py) keeps the body of every request the simulator
received, so the tests compare them with Meta's components written out by hand.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg.rows import dict_row

from pgwa.queries import queries
from tests import factories
from tests.api_support import api_client
from tests.test_template_campaigns import RecordingProxy, run, setup_number, upload_video
from tests.test_template_mapping import LOCATION, expected

try:  # tests/ is a rootless directory under pytest's default import mode
    from sim_fixtures import NUMBERS
except ImportError:  # tests/ became a package
    from tests.sim_fixtures import NUMBERS

pytest_plugins = ["sim_fixtures"] if __package__ in (None, "") else ["tests.sim_fixtures"]
pytestmark = pytest.mark.usefixtures("quiet_world")


@pytest.fixture
def proxy(sim):
    recorder = RecordingProxy(sim.url)
    yield recorder
    recorder.close()


def api_key(db: psycopg.Connection, tenant: int) -> dict[str, str]:
    with db.cursor(row_factory=dict_row) as cur:
        key = cur.execute(queries["create_api_key"], {
            "tenant_id": tenant, "name": "send", "scope": "send", "expires_at": None,
            "rate_limit_per_minute": None}).fetchone()["key"]
    return {"Authorization": f"Bearer {key}"}


def test_templates_with_header_named_body_and_buttons_reach_the_simulator_as_meta_expects(
        db: psycopg.Connection, db_url: str, sim, proxy: RecordingProxy) -> None:
    tenant, number_id = setup_number(db, sim)
    video_id = upload_video(sim)
    ann = {"phone": "447700900101", "name": "Ann", "photo": "https://cdn.example/a.jpg", "until": "May 31",
           "path": "ann", "code": "AB12"}
    sends = {
        # An image link, named body parameters, a URL suffix and a quick-reply payload.
        "spring_sale": {"header": {"link": ann["photo"]},
                        "body": {"first_name": "Ann", "discount": "20%", "end_date": "May 31"},
                        "buttons": {"0": "ann", "1": "STOP"}},
        # A Meta media id; a positional body under "parameters".
        "new_arrivals_video": {"parameters": {"header": {"media_id": video_id}, "body": ["Ann"]}},
        "visit_store": {"header": {"location": LOCATION}, "body": ["Ann"]},
        "coupon_reminder": {"header": "Ann", "body": ["AB12", "3"], "buttons": ["AB12", "SPRING"]},
    }
    phones = {kind: f"4477009002{i:02d}" for i, kind in enumerate(sends)}
    ids = {}
    with api_client(db_url) as client:
        client.headers.update(api_key(db, tenant))
        for kind, params in sends.items():
            r = client.post("/v1/messages", json={"number_id": number_id, "to": "+" + phones[kind],
                                                  "template": {"name": kind, "language": "en_US", **params}},
                            headers={"Idempotency-Key": f"tpl-{kind}"})
            assert r.status_code == 201, r.text
            ids[kind] = r.json()["outbound_id"]
    run(db_url, proxy.url, "SELECT bool_and(state = 'accepted') FROM core.outbound_messages WHERE outbound_id = ANY(%s)",
        (list(ids.values()),))

    received = proxy.received()
    for kind in sends:
        want = expected(kind, {**ann, "phone": phones[kind]})
        if kind == "new_arrivals_video":
            want[0]["parameters"][0]["video"]["id"] = video_id
        assert received[phones[kind]] == {
            "messaging_product": "whatsapp", "recipient_type": "individual", "to": phones[kind], "type": "template",
            "template": {"name": kind, "language": {"code": "en_US"}, "components": want},
            "biz_opaque_callback_data": str(ids[kind])}, kind
    stats = sim.stats()
    assert stats["duplicates"] == 0 and not stats["rejected_by_code"], stats


def test_a_parameter_the_template_does_not_take_is_refused_naming_it(db: psycopg.Connection, db_url: str,
                                                                     sim) -> None:
    tenant, number_id = setup_number(db, sim)
    with api_client(db_url) as client:
        client.headers.update(api_key(db, tenant))
        r = client.post("/v1/messages", json={"number_id": number_id, "to": "+447700900150", "template": {
            "name": "spring_sale", "language": "en_US", "header": {"link": "https://cdn.example/a.jpg"},
            "body": {"first_name": "Ann", "discount": "20%"}, "buttons": {"0": "ann"}}})
        assert r.status_code == 422 and r.json()["error"]["code"] == "PW102", r.text
        assert "{{end_date}}" in r.json()["error"]["message"]
        column = client.post("/v1/messages", json={"number_id": number_id, "to": "+447700900150", "template": {
            "name": "visit_store", "language": "en_US", "header": {"location": LOCATION},
            "body": [{"column": "name"}]}})
        assert column.status_code == 422 and "not CSV columns" in column.json()["error"]["message"], column.text
    assert db.execute("SELECT count(*) FROM core.outbound_messages").fetchone()[0] == 0


def test_a_text_outside_the_window_is_refused_and_nothing_is_queued(db: psycopg.Connection, db_url: str,
                                                                    sim) -> None:
    tenant, number_id = setup_number(db, sim)
    with api_client(db_url) as client:
        client.headers.update(api_key(db, tenant))
        r = client.post("/v1/messages", json={"number_id": number_id, "to": "+447700900160",
                                              "message": {"type": "text", "text": "Your parcel is here"}},
                        headers={"Idempotency-Key": "text-1"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "PW304", r.text
    assert "window" in r.json()["error"]["message"]
    assert db.execute("SELECT count(*) FROM core.outbound_messages").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM core.api_sends").fetchone()[0] == 0
    assert factories.queue(db, factories.reply_queue(db, number_id)) == []
    assert NUMBERS[0]["phone_number_id"] not in {e["phone_number_id"] for e in sim.ledger(0)}
