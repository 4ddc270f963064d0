"""POST /{version}/{phone_number_id}/messages: answers, errors, limits and faults."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest

from tests.sim_fixtures import NUMBERS, VERSION, template_body, text_body

ONE, TWO, THREE = (n["phone_number_id"] for n in NUMBERS)


def error_of(resp: httpx.Response, status: int, code: int) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    assert isinstance(err["fbtrace_id"], str) and err["fbtrace_id"]
    return err


def whatsapp_error(resp: httpx.Response, status: int, code: int) -> dict:
    err = error_of(resp, status, code)
    assert err["type"] == "OAuthException"
    assert err["message"].startswith(f"(#{code}) ")
    assert err["error_data"]["messaging_product"] == "whatsapp"
    assert err["error_data"]["details"]
    return err


def test_template_send_answers_meta_success_shape(sim):
    resp = sim.send(template_body(to="+1 (555) 777-0001"))
    assert resp.status_code == 200
    body = resp.json()
    assert body["messaging_product"] == "whatsapp"
    assert body["contacts"] == [{"input": "+1 (555) 777-0001", "wa_id": "15557770001"}]
    [msg] = body["messages"]
    assert msg["message_status"] == "accepted"
    assert msg["id"].startswith("wamid.") and len(msg["id"]) > 30


def test_wamids_are_unique(sim):
    ids = {sim.send(template_body(to=f"1555777{i:04d}")).json()["messages"][0]["id"]
           for i in range(50)}
    assert len(ids) == 50


def test_held_for_quality_assessment_share(sim):
    sim.faults(held_for_quality_rate=1.0)
    assert sim.send(template_body()).json()["messages"][0]["message_status"] == \
        "held_for_quality_assessment"


def test_any_graph_version_is_accepted(sim):
    resp = sim.http.post(f"/v17.0/{ONE}/messages", json=template_body(),
                         headers={"Authorization": "Bearer tok-one"})
    assert resp.status_code == 200


def test_read_receipt_answers_success(sim):
    resp = sim.send({"messaging_product": "whatsapp", "status": "read",
                     "message_id": "wamid.HBgLMTU1NTc3NzAwMDEVAgASGBQzQQA="})
    assert resp.status_code == 200
    assert resp.json() == {"success": True}


def test_bad_token_is_190_unauthorized(sim):
    err = error_of(sim.send(template_body(), token="not-a-token"), 401, 190)
    assert err["type"] == "OAuthException"
    resp = sim.http.post(f"/{VERSION}/{ONE}/messages", json=template_body())
    error_of(resp, 401, 190)


def test_unknown_phone_number_id_is_100_subcode_33(sim):
    err = error_of(sim.send(template_body(), pnid="987654321", token="tok-one"), 400, 100)
    assert err["error_subcode"] == 33
    assert err["type"] == "GraphMethodException"
    assert "987654321" in err["message"]


def test_token_of_another_number_cannot_send_for_it(sim):
    err = error_of(sim.send(template_body(), pnid=TWO, token="tok-one"), 400, 100)
    assert err["error_subcode"] == 33


def test_messaging_product_must_be_whatsapp(sim):
    body = template_body()
    body["messaging_product"] = "sms"
    whatsapp_error(sim.send(body), 400, 100)
    del body["messaging_product"]
    whatsapp_error(sim.send(body), 400, 100)


def test_missing_or_invalid_recipient(sim):
    body = template_body()
    del body["to"]
    whatsapp_error(sim.send(body), 400, 131008)
    whatsapp_error(sim.send(template_body(to="12ab")), 400, 131009)


def test_unsupported_type_and_missing_type_object(sim):
    whatsapp_error(sim.send({"messaging_product": "whatsapp", "to": "15557770001",
                             "type": "fax", "fax": {}}), 400, 100)
    whatsapp_error(sim.send({"messaging_product": "whatsapp", "to": "15557770001",
                             "type": "template"}), 400, 131008)


def test_unknown_template_or_language_is_132001(sim):
    err = whatsapp_error(sim.send(template_body(name="no_such_template")), 400, 132001)
    assert "no_such_template" in err["error_data"]["details"]
    whatsapp_error(sim.send(template_body(lang="fr")), 400, 132001)
    assert sim.send(template_body(lang="es")).status_code == 200


def test_paused_template_is_132015_and_disabled_is_132016(sim):
    whatsapp_error(sim.send(template_body(name="winter_sale", params=["30%"])), 400, 132015)
    whatsapp_error(sim.send(template_body(name="legacy_notice", params=None)), 400, 132016)


@pytest.mark.parametrize("name,params", [
    ("order_update", ["only-one"]),
    ("order_update", ["a", "b", "c"]),
    ("order_update", None),
    ("hello_world", ["unexpected"]),
    ("promo_offer", None),
])
def test_body_parameter_count_mismatch_is_132000(sim, name, params):
    err = whatsapp_error(sim.send(template_body(name=name, params=params)), 400, 132000)
    assert "number of localizable_params" in err["error_data"]["details"]


@pytest.mark.parametrize("name,params", [
    ("hello_world", None), ("promo_offer", ["SAVE20"]), ("order_update", ["Ana", "A-1"]),
    ("appointment_reminder", ["Ana", "May 3", "10:30"]),
])
def test_matching_parameter_counts_are_accepted(sim, name, params):
    assert sim.send(template_body(name=name, params=params)).status_code == 200


def test_named_parameters_must_match_the_template(sim):
    body = template_body(name="named_greeting", params=None)
    params = [{"type": "text", "parameter_name": "first_name", "text": "Ana"},
              {"type": "text", "parameter_name": "since", "text": "2021"}]
    body["template"]["components"] = [{"type": "body", "parameters": params}]
    assert sim.send(body).status_code == 200
    params[1]["parameter_name"] = "year"
    whatsapp_error(sim.send(body), 400, 132012)     # an unknown name: a kind mismatch


def test_free_form_message_outside_the_window_is_131047(sim):
    whatsapp_error(sim.send(text_body(to="15557770009")), 400, 131047)
    sim.control("inbound", {"phone_number_id": ONE, "from": "15557770009", "text": "hi"})
    assert sim.send(text_body(to="15557770009")).status_code == 200
    # The window belongs to that number and that user only.
    whatsapp_error(sim.send(text_body(to="15557770009"), pnid=TWO), 400, 131047)
    whatsapp_error(sim.send(text_body(to="15557770010")), 400, 131047)


def test_interactive_and_media_need_their_objects(sim):
    sim.control("inbound", {"phone_number_id": ONE, "from": "15557770009", "text": "hi"})
    interactive = {"type": "button", "body": {"text": "Pick one"},
                   "action": {"buttons": [{"type": "reply", "reply": {"id": "y", "title": "Yes"}}]}}
    ok = {"messaging_product": "whatsapp", "to": "15557770009", "type": "interactive",
          "interactive": interactive}
    assert sim.send(ok).status_code == 200
    interactive["action"]["buttons"] = []
    whatsapp_error(sim.send(ok), 400, 131009)
    image = {"messaging_product": "whatsapp", "to": "15557770009", "type": "image", "image": {}}
    whatsapp_error(sim.send(image), 400, 131008)
    image["image"] = {"link": "https://example.com/a.png"}
    assert sim.send(image).status_code == 200
    reaction = {"messaging_product": "whatsapp", "to": "15557770009", "type": "reaction",
                "reaction": {"message_id": "wamid.x", "emoji": "\U0001f44d"}}
    assert sim.send(reaction).status_code == 200


def test_undeliverable_recipient_can_fail_synchronously(sim):
    sim.faults(failing_recipients=["15550000404"], failing_mode="sync")
    whatsapp_error(sim.send(template_body(to="15550000404")), 400, 131026)
    assert sim.send(template_body(to="15550000405")).status_code == 200


def fire(sim, bodies, pnid=ONE, workers=30):
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda b: sim.send(b, pnid=pnid), bodies))


def test_throughput_limit_answers_130429_beyond_the_configured_rate(sim):
    # Number TWO is configured at 20 msg/s: of 60 sends in one instant 20 pass. The
    # simulator's clock stands still, so the burst fits in one window however long the
    # machine takes to fire it.
    sim.clock(frozen=True)
    resps = fire(sim, [template_body(to=f"1555100{i:04d}") for i in range(60)], pnid=TWO)
    ok = [r for r in resps if r.status_code == 200]
    limited = [r for r in resps if r.status_code != 200]
    assert len(ok) == 20
    for r in limited:
        err = whatsapp_error(r, 400, 130429)
        assert err["message"] == "(#130429) Rate limit hit"
    stats = sim.stats()
    assert stats["numbers"][TWO]["peak_1s_rate"] == 20
    assert stats["numbers"][TWO]["peak_1s_attempts"] == 60
    assert stats["rejected_by_code"]["130429"] == 40
    # The window slides: a second later the number can send again, and not before.
    sim.clock(advance_s=0.95)
    whatsapp_error(sim.send(template_body(), pnid=TWO), 400, 130429)
    sim.clock(advance_s=0.1)
    assert sim.send(template_body(), pnid=TWO).status_code == 200


def test_throughput_is_configurable_per_number(sim):
    sim.clock(frozen=True)              # the 12 land in one window, however slowly
    sim.control("numbers", {"phone_number_id": TWO, "throughput_mps": 5})
    resps = fire(sim, [template_body(to=f"1555200{i:04d}") for i in range(12)], pnid=TWO)
    assert sum(r.status_code == 200 for r in resps) == 5
    assert sim.send(template_body()).status_code == 200   # other numbers are unaffected


def test_pair_rate_allows_a_burst_of_45_then_one_message_per_6_seconds(sim):
    # On by default (Meta's rule): a token bucket of 45 per (number, user), one token back
    # every 6 s. The clock stands still while the burst is fired.
    sim.clock(frozen=True)
    user = "447700900100"
    codes = [sim.send(template_body(to=user)).status_code for _ in range(46)]
    assert codes == [200] * 45 + [400]
    whatsapp_error(sim.send(template_body(to=user)), 400, 131056)
    # Other users and the same user on another number are not affected.
    assert sim.send(template_body(to="447700900101")).status_code == 200
    assert sim.send(template_body(to=user), pnid=TWO).status_code == 200
    # The burst borrowed from the future: one message per 6 s until the bucket refills.
    sim.clock(advance_s=5.9)
    whatsapp_error(sim.send(template_body(to=user)), 400, 131056)
    sim.clock(advance_s=0.2)
    assert sim.send(template_body(to=user)).status_code == 200
    whatsapp_error(sim.send(template_body(to=user)), 400, 131056)
    sim.clock(advance_s=12.1)
    assert [sim.send(template_body(to=user)).status_code for _ in range(3)] == [200, 200, 400]
    assert sim.stats()["rejected_by_code"]["131056"] == 5


def test_pair_rate_is_configurable_and_can_be_turned_off(sim):
    sim.clock(frozen=True)
    sim.faults(pair_rate_limit={"interval_s": 0.3, "burst": 1})
    assert sim.send(template_body(to="447700900102")).status_code == 200
    whatsapp_error(sim.send(template_body(to="447700900102")), 400, 131056)
    sim.clock(advance_s=0.31)
    assert sim.send(template_body(to="447700900102")).status_code == 200
    sim.faults(pair_rate_limit={"enabled": False})
    assert all(sim.send(template_body(to="447700900102")).status_code == 200 for _ in range(50))


def test_forced_rate_limit_burst(sim):
    sim.clock(frozen=True)
    sim.faults(rate_limit_burst={"seconds": 0.4, "phone_number_id": ONE})
    whatsapp_error(sim.send(template_body()), 400, 130429)
    assert sim.send(template_body(), pnid=TWO).status_code == 200
    sim.clock(advance_s=0.35)
    whatsapp_error(sim.send(template_body()), 400, 130429)
    sim.clock(advance_s=0.1)
    assert sim.send(template_body()).status_code == 200


def test_token_expires_after_n_more_sends(sim):
    sim.faults(token_expiry={"phone_number_id": ONE, "after_sends": 3})
    codes = [sim.send(template_body(to=f"1555300{i:04d}")).status_code for i in range(5)]
    assert codes == [200, 200, 200, 401, 401]
    err = error_of(sim.send(template_body()), 401, 190)
    assert err["error_subcode"] == 463
    assert "Session has expired" in err["message"]
    assert sim.send(template_body(), pnid=TWO).status_code == 200
    # A new token (the client refreshed it) ends the expiry.
    sim.control("numbers", {"phone_number_id": ONE, "token": "tok-one-new"})
    assert sim.send(template_body(), token="tok-one-new").status_code == 200
    error_of(sim.send(template_body(), token="tok-one"), 401, 190)


def test_token_expires_at_a_time(sim):
    sim.clock(frozen=True)
    sim.faults(token_expiry={"phone_number_id": ONE, "in_seconds": 0.3})
    assert sim.send(template_body()).status_code == 200
    sim.clock(advance_s=0.25)
    assert sim.send(template_body()).status_code == 200
    sim.clock(advance_s=0.1)
    assert error_of(sim.send(template_body()), 401, 190)["error_subcode"] == 463


@pytest.mark.parametrize("fault,status,code", [
    ("131000", 500, 131000), ("131016", 503, 131016), ("http_500", 500, 1), ("http_503", 503, 2),
])
def test_transient_faults(sim, fault, status, code):
    sim.faults(error_rates={fault: 1.0})
    error_of(sim.send(template_body()), status, code)
    sim.faults(error_rates={fault: 0.0})
    assert sim.send(template_body()).status_code == 200


def test_transient_fault_rate_is_roughly_the_configured_share(sim):
    sim.faults(error_rates={"131000": 0.3})
    codes = [sim.send(template_body(to=f"1555400{i:04d}")).status_code for i in range(200)]
    assert 30 <= codes.count(500) <= 95


def test_dropped_connection_before_and_after_accept(sim):
    sim.faults(drop_connection_rate=1.0, drop_after_accept_share=0.0)
    with pytest.raises(httpx.RemoteProtocolError):
        sim.send(template_body(to="15557770200"))
    assert sim.ledger() == []
    sim.faults(drop_after_accept_share=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        sim.send(template_body(to="15557770201"))
    # Accepted although the client never heard: a blind retry would duplicate it.
    assert [e["to"] for e in sim.ledger()] == ["15557770201"]
    sim.faults(drop_connection_rate=0.0)
    assert sim.send(template_body()).status_code == 200


def test_latency_distribution(sim):
    sim.faults(latency_ms={"median": 40, "p99": 80})
    t0 = time.monotonic()
    for _ in range(5):
        assert sim.send(template_body()).status_code == 200
    assert time.monotonic() - t0 >= 5 * 0.015


def test_unknown_settings_are_rejected(sim):
    resp = sim.http.post("/_sim/faults", json={"no_such_fault": 1})
    assert resp.status_code == 400
    resp = sim.http.post("/_sim/faults", json={"error_rates": {"131000": 2}})
    assert resp.status_code == 400
