"""Meta's limits in the simulator: messaging tiers per portfolio, throughput levels and
upgrades, coexistence numbers, inbound messages in the throughput, account call limits."""

from __future__ import annotations

import json

import pytest

from tests.sim_fixtures import NUMBERS, VERSION, template_body, wait_for
from worker.graph import regain_after_s

ONE, TWO, THREE = (n["phone_number_id"] for n in NUMBERS)
WABA_ONE, WABA_THREE = NUMBERS[0]["waba_id"], NUMBERS[2]["waba_id"]
USAGE = "X-Business-Use-Case-Usage"


def node(sim, pnid: str, fields: str, token: str = "tok-one") -> dict:
    resp = sim.http.get(f"/{VERSION}/{pnid}", params={"fields": fields},
                        headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    return resp.json()


def uk(i: int) -> str:
    return f"4477009{i:05d}"


def send_ok(sim, body, pnid=ONE) -> str:
    resp = sim.send(body, pnid=pnid)
    assert resp.status_code == 200, resp.text
    return resp.json()["messages"][0]["id"]


def statuses_of(receiver, wamid):
    return [s for s in receiver.statuses() if s["id"] == wamid]


# --- messaging limits (tiers) ------------------------------------------------------------

def test_an_established_business_is_unlimited_and_says_so(sim):
    assert node(sim, ONE, "whatsapp_business_manager_messaging_limit,throughput") == {
        "throughput": {"level": "STANDARD"}, "id": ONE,
        "whatsapp_business_manager_messaging_limit": "TIER_UNLIMITED"}
    # Not among the default fields, as Meta answers.
    assert "whatsapp_business_manager_messaging_limit" not in node(sim, ONE, "")
    business = sim.stats()["businesses"][WABA_ONE]
    assert business["tier"] == "TIER_UNLIMITED" and business["messaging_limit"] is None


@pytest.mark.usefixtures("quiet_world")
def test_a_portfolio_reaches_at_most_its_tier_of_new_users_in_a_moving_24_hours(sim, sim_receiver):
    # WABA 900000001 (numbers ONE and TWO) is one portfolio; it may start 50 users a day.
    sim.faults(messaging_limit={"tiers": {WABA_ONE: "TIER_50"}})
    sim.clock(frozen=True)
    for i in range(40):
        send_ok(sim, template_body(to=uk(i)), pnid=ONE)
    for i in range(40, 50):
        send_ok(sim, template_body(to=uk(i)), pnid=TWO)      # the numbers share the budget
    # The 51st new user: accepted, then a failed 131049 (Meta has no documented code).
    refused = send_ok(sim, template_body(to=uk(50)), pnid=TWO)
    # Users already reached, a user whose window is open, another portfolio: all fine.
    sim.clock(advance_s=1)
    kept = send_ok(sim, template_body(to=uk(3)), pnid=TWO)
    sim.control("inbound", {"phone_number_id": ONE, "from": uk(99), "text": "hi"})
    sim_receiver.wait_for(lambda r: r.messages())
    in_window = send_ok(sim, template_body(to=uk(99)), pnid=ONE)
    other = send_ok(sim, template_body(to=uk(50)), pnid=THREE)
    sim.clock(advance_s=1)
    [failed] = sim_receiver.wait_for(lambda r: statuses_of(r, refused))
    assert failed["status"] == "failed" and failed["errors"][0]["code"] == 131049
    for wamid in (kept, in_window, other):
        sim_receiver.wait_for(lambda r, w=wamid: {s["status"] for s in statuses_of(r, w)} == {"sent", "delivered"})
    stats = sim.stats()["businesses"]
    assert stats[WABA_ONE] == {"tier": "TIER_50", "messaging_limit": 50, "unique_users_24h": 50,
                               "max_unique_users_24h": 50, "refused_new_users": 1}
    assert stats[WABA_THREE]["unique_users_24h"] == 1
    # The window moves: 24 hours after the first users were reached, new ones get through.
    sim.clock(advance_s=24 * 3600 - 2.5)
    sim.send(template_body(to=uk(51)), pnid=ONE)
    sim.clock(advance_s=1.0)
    assert sim.stats()["businesses"][WABA_ONE]["refused_new_users"] == 2
    fresh = send_ok(sim, template_body(to=uk(52)), pnid=ONE)
    sim.clock(advance_s=1)
    assert {s["status"] for s in sim_receiver.wait_for(lambda r: statuses_of(r, fresh))} <= {"sent", "delivered"}
    assert sim.stats()["businesses"][WABA_ONE]["max_unique_users_24h"] == 50


def test_the_limit_can_be_refused_synchronously_instead(sim):
    sim.faults(messaging_limit={"tiers": {WABA_THREE: "TIER_50"}, "mode": "sync", "code": 131048})
    sim.clock(frozen=True)
    for i in range(50):
        send_ok(sim, template_body(to=uk(i)), pnid=THREE)
    resp = sim.send(template_body(to=uk(50)), pnid=THREE)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == 131048
    assert sim.send(template_body(to=uk(7)), pnid=THREE).status_code == 200


def test_a_tier_upgrade_sends_business_capability_update_to_every_waba_of_the_portfolio(sim, sim_receiver):
    # THREE's WABA joins ONE's portfolio: they share the limit and its webhooks.
    sim.control("numbers", {"phone_number_id": THREE, "business_id": WABA_ONE})
    out = sim.control("tier", {"phone_number_id": ONE, "tier": "TIER_10K"})
    assert out["business_id"] == WABA_ONE and out["wabas"] == [WABA_ONE, WABA_THREE]
    got = sim_receiver.wait_for(lambda r: len(r.changes("business_capability_update")) == 2
                                and r.changes("business_capability_update"))
    assert got == [{"max_daily_conversations_per_business": 10000}] * 2
    entries = {p["json"]["entry"][0]["id"] for p in sim_receiver.posts}
    assert entries == {WABA_ONE, WABA_THREE}
    assert all(isinstance(p["json"]["entry"][0]["time"], int) for p in sim_receiver.posts)
    for pnid, token in ((ONE, "tok-one"), (THREE, "tok-three")):
        assert node(sim, pnid, "whatsapp_business_manager_messaging_limit", token)[
            "whatsapp_business_manager_messaging_limit"] == "TIER_10K"
    sim_receiver.clear()
    sim.control("tier", {"business_id": WABA_ONE, "tier": "TIER_UNLIMITED"})
    assert sim_receiver.wait_for(lambda r: r.changes("business_capability_update"))[0] == {
        "max_daily_conversations_per_business": -1}
    # The tier is a setting too: /_sim/faults sets it without a webhook.
    sim.faults(messaging_limit={"tiers": {WABA_ONE: "TIER_250"}})
    assert sim.stats()["businesses"][WABA_ONE]["messaging_limit"] == 250
    assert sim.http.post("/_sim/tier", json={"phone_number_id": ONE, "tier": "TIER_3K"}).status_code == 400


# --- throughput -------------------------------------------------------------------------

def burst(sim, pnid: str, n: int, offset: int = 0) -> list[int]:
    return [sim.send(template_body(to=uk(offset + i)), pnid=pnid).status_code for i in range(n)]


def test_a_throughput_upgrade_holds_the_number_a_minute_then_sends_at_1000(sim, sim_receiver):
    sim.clock(frozen=True)
    sim.control("throughput", {"phone_number_id": TWO, "throughput_mps": 1000})
    resp = sim.send(template_body(), pnid=TWO)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == 131057
    assert sim.send(template_body()).status_code == 200          # the other number sends
    sim.clock(advance_s=59)
    assert sim.send(template_body(), pnid=TWO).json()["error"]["code"] == 131057
    assert sim_receiver.changes("phone_number_quality_update") == []
    sim.clock(advance_s=1.1)
    [value] = sim_receiver.wait_for(lambda r: r.changes("phone_number_quality_update"))
    assert value == {"display_phone_number": NUMBERS[1]["display_phone_number"],
                     "event": "THROUGHPUT_UPGRADE",
                     "max_daily_conversations_per_business": "TIER_UNLIMITED"}
    assert node(sim, TWO, "throughput")["throughput"] == {"level": "HIGH"}
    # 20 msg/s before; now 100 in one instant all pass.
    assert burst(sim, TWO, 100) == [200] * 100


def test_coexistence_numbers_send_20_messages_a_second(sim):
    sim.control("numbers", {"phone_number_id": ONE, "coexistence": True})
    sim.clock(frozen=True)
    codes = burst(sim, ONE, 30)
    assert codes.count(200) == 20 and codes.count(400) == 10
    assert sim.stats()["numbers"][ONE]["throughput_mps"] == 20
    sim.control("numbers", {"phone_number_id": ONE, "coexistence": False})
    sim.clock(advance_s=1.01)
    assert burst(sim, ONE, 80, offset=100).count(200) == 80


def test_inbound_messages_count_toward_the_numbers_throughput(sim, sim_receiver):
    sim.clock(frozen=True)
    for i in range(15):     # number TWO: 20 msg/s
        sim.control("inbound", {"phone_number_id": TWO, "from": uk(500 + i), "text": "hi"})
    sim_receiver.wait_for(lambda r: len(r.messages()) == 15)
    wait_for(lambda: sim.stats()["numbers"][TWO]["inbound"] == 15, 10, "inbound counted")
    codes = burst(sim, TWO, 10)
    assert codes.count(200) == 5, codes
    stats = sim.stats()["numbers"][TWO]
    assert stats["peak_1s_rate"] == 20 and stats["accepted"] == 5
    sim.clock(advance_s=1.01)
    assert burst(sim, TWO, 20, offset=50).count(200) == 20


# --- Graph API call limits (80007, 4) ------------------------------------------------------

def test_an_account_call_limit_burst_answers_80007_with_the_usage_header(sim):
    sim.clock(frozen=True)
    sim.faults(account_limit={"code": 80007, "seconds": 600, "regain_minutes": 10,
                              "phone_number_id": ONE})
    for pnid in (ONE, TWO):                       # every number of the WABA
        resp = sim.send(template_body(), pnid=pnid)
        assert resp.status_code == 400 and resp.json()["error"]["code"] == 80007
        usage = json.loads(resp.headers[USAGE])
        assert usage == {WABA_ONE: [{"type": "whatsapp_business_management", "call_count": 100,
                                     "total_cputime": 100, "total_time": 100,
                                     "estimated_time_to_regain_access": 10}]}
        assert regain_after_s(resp.headers.raw) == 600   # pgwa's worker reads it
    templates = sim.http.get(f"/{VERSION}/{WABA_ONE}/message_templates",
                             headers={"Authorization": "Bearer tok-one"})
    assert templates.status_code == 400 and templates.json()["error"]["code"] == 80007
    assert USAGE in templates.headers
    ok = sim.send(template_body(), pnid=THREE)    # another WABA
    assert ok.status_code == 200 and USAGE not in ok.headers
    sim.clock(advance_s=600)
    assert sim.send(template_body(), pnid=ONE).status_code == 200


def test_an_app_call_limit_burst_answers_4_everywhere_until_it_ends(sim):
    sim.clock(frozen=True)
    sim.faults(account_limit={"code": 4, "seconds": 120})
    for pnid in (ONE, THREE):
        resp = sim.send(template_body(), pnid=pnid)
        assert resp.status_code == 400 and resp.json()["error"]["code"] == 4
        assert "error_data" not in resp.json()["error"]        # a Graph-level error
        [entries] = json.loads(resp.headers[USAGE]).values()
        assert entries[0]["estimated_time_to_regain_access"] == 2
    sim.clock(advance_s=61)
    [entries] = json.loads(sim.send(template_body()).headers[USAGE]).values()
    assert entries[0]["estimated_time_to_regain_access"] == 1     # the time left
    sim.clock(advance_s=60)
    assert sim.send(template_body()).status_code == 200
    assert sim.http.post("/_sim/faults", json={"account_limit": {"code": 131000}}).status_code == 400

