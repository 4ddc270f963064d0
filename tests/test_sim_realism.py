"""The simulator behaves as Meta by default, and a test that needs a quiet world asks for it.

Meta's random behaviours on by default (duplicated and reordered statuses, `read` without
`delivered`, the per-user marketing cap), its deterministic rules (the US marketing pause),
any Meta error code injectable synchronously or as a failed status, template pacing
(held for quality), batched webhooks and retries over hours on the simulator's clock.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from sim.config import load_config
from sim.errors import TABLE
from sim.simulator import Simulator
from tests.sim_fixtures import NUMBERS, template_body, text_body, wait_for

ONE, TWO, THREE = (n["phone_number_id"] for n in NUMBERS)
WABA_ONE = NUMBERS[0]["waba_id"]
US, CANADA, UK = "12125550100", "14165550100", "447700900001"


def uk(i: int) -> str:
    return f"4477009{i:05d}"


def send_ok(sim, body, pnid=ONE) -> str:
    resp = sim.send(body, pnid=pnid)
    assert resp.status_code == 200, resp.text
    return resp.json()["messages"][0]["id"]


def statuses_of(receiver, wamid):
    return [s for s in receiver.statuses() if s["id"] == wamid]


def promo(to: str) -> dict:
    return template_body(to=to, name="promo_offer", params=["SAVE20"])


def settle(sim, seconds: float = 5.0) -> dict:
    """Move the frozen clock past every status delay, then wait until all was posted."""
    sim.clock(advance_s=seconds)
    return sim.quiet()


# --- the default world and the quiet one ------------------------------------------------

def test_the_default_world_is_metas(sim):
    s = sim.http.get("/_sim/faults").json()
    assert s["profile"] == "realistic"
    assert s["webhook"]["duplicate_rate"] > 0 and s["webhook"]["reorder_rate"] > 0
    assert s["statuses"]["read_without_delivered_rate"] > 0
    assert 0 < s["marketing_cap_share"] < 0.1 and s["us_marketing_blocked"] is True
    assert s["pair_rate_limit"] == {"enabled": True, "interval_s": 6.0, "burst": 45}
    assert s["messaging_limit"]["default_tier"] == "TIER_UNLIMITED"
    assert s["webhook"]["max_age_s"] == 7 * 24 * 3600 and s["webhook"]["retry_max_ms"] == 3_600_000


def test_statuses_come_duplicated_and_read_without_delivered_by_default(sim, sim_receiver):
    sim.control("numbers", {"phone_number_id": ONE, "throughput_mps": 1000})
    sim.faults(statuses={"read_rate": 1.0})
    sim.clock(frozen=True)
    wamids = [send_ok(sim, template_body(to=uk(i))) for i in range(400)]
    settle(sim)
    by_wamid: dict[str, Counter] = {w: Counter() for w in wamids}
    for s in sim_receiver.statuses():
        by_wamid[s["id"]][s["status"]] += 1
    duplicated = sum(1 for c in by_wamid.values() if max(c.values()) > 1)
    read_only = [w for w, c in by_wamid.items() if c["read"] and not c["delivered"]]
    # 1% of ~1,200 statuses twice, 5% of 400 reads without delivered: never none of either.
    assert duplicated >= 1 and read_only, (duplicated, len(read_only))
    assert all(c["sent"] and c["read"] for c in by_wamid.values())   # nothing lost
    # A read that stands for delivered carries what delivered would have: the pricing.
    read = next(s for s in sim_receiver.statuses() if s["id"] == read_only[0] and s["status"] == "read")
    assert read["pricing"]["category"] == "utility"


def test_the_quiet_profile_turns_the_random_behaviours_off_and_keeps_metas_rules(sim, sim_receiver):
    sim.faults(error_rates={"131048": 0.5}, inject=[{"code": 131026, "rate": 0.5}])
    s = sim.profile("quiet")
    assert s["profile"] == "quiet"
    assert s["webhook"]["duplicate_rate"] == 0 and s["webhook"]["reorder_rate"] == 0
    assert s["statuses"]["read_without_delivered_rate"] == 0 and s["marketing_cap_share"] == 0
    assert set(s["error_rates"].values()) == {0.0} and s["inject"] == []
    assert s["us_marketing_blocked"] and s["pair_rate_limit"]["enabled"]    # rules stay
    sim.control("numbers", {"phone_number_id": ONE, "throughput_mps": 1000})
    sim.faults(statuses={"read_rate": 1.0})
    sim.clock(frozen=True)
    wamids = [send_ok(sim, promo(uk(i))) for i in range(200)]
    us = send_ok(sim, promo(US))
    settle(sim)
    for wamid in wamids:            # exactly sent, delivered, read: once each
        assert sorted(s["status"] for s in statuses_of(sim_receiver, wamid)) == ["delivered", "read", "sent"]
    assert [s["status"] for s in statuses_of(sim_receiver, us)] == ["failed"]
    # And back: the realistic values return; a reset gives the realistic world too.
    assert sim.profile("realistic")["webhook"]["duplicate_rate"] == 0.01
    sim.profile("quiet")
    sim.control("reset")
    assert sim.http.get("/_sim/faults").json()["profile"] == "realistic"
    assert sim.http.post("/_sim/faults", json={"profile": "calm"}).status_code == 400


def test_a_config_or_flag_can_start_the_simulator_quiet(monkeypatch):
    assert Simulator(load_config(None, profile="quiet")).settings["webhook"]["duplicate_rate"] == 0
    monkeypatch.setenv("SIM_PROFILE", "quiet")
    assert Simulator(load_config(None)).settings["profile"] == "quiet"
    monkeypatch.delenv("SIM_PROFILE")
    assert Simulator(load_config(None)).settings["profile"] == "realistic"


# --- the marketing rules (131049) ----------------------------------------------------------

def test_marketing_to_us_numbers_is_accepted_then_fails_with_131049(sim, sim_receiver):
    sim.profile("quiet")                      # only the rule, not the random share
    sim.clock(frozen=True)
    to_us = sim.send(promo(US))
    assert to_us.json()["messages"][0]["message_status"] == "accepted"   # not refused
    wamids = {"us": to_us.json()["messages"][0]["id"], "canada": send_ok(sim, promo(CANADA)),
              "uk": send_ok(sim, promo(UK)), "us_utility": send_ok(sim, template_body(to=US))}
    settle(sim)
    got = {k: sorted(s["status"] for s in statuses_of(sim_receiver, w)) for k, w in wamids.items()}
    assert got == {"us": ["failed"], "canada": ["delivered", "sent"], "uk": ["delivered", "sent"],
                   "us_utility": ["delivered", "sent"]}
    [failed] = statuses_of(sim_receiver, wamids["us"])
    [err] = failed["errors"]
    assert err["code"] == 131049 and err["title"] == TABLE[131049].title
    assert err["error_data"]["details"] and err["href"]
    assert sim.stats()["failed_later_by_code"] == {"131049": 1}
    sim_receiver.clear()
    sim.faults(us_marketing_blocked=False)
    again = send_ok(sim, promo("12125550101"))
    settle(sim)
    assert sorted(s["status"] for s in statuses_of(sim_receiver, again)) == ["delivered", "sent"]


def test_a_share_of_marketing_sends_fails_later_with_131049(sim, sim_receiver):
    sim.control("numbers", {"phone_number_id": ONE, "throughput_mps": 1000})
    sim.faults(marketing_cap_share=0.3)
    sim.clock(frozen=True)
    codes = [sim.send(promo(uk(i))).status_code for i in range(200)]
    assert set(codes) == {200}                          # all accepted
    utility = [send_ok(sim, template_body(to=uk(300 + i))) for i in range(50)]
    settle(sim)
    capped = sim.stats()["failed_later_by_code"].get("131049", 0)
    assert 30 <= capped <= 95, capped                   # 60 expected
    failed = [s for s in sim_receiver.statuses() if s["status"] == "failed"]
    assert len({s["id"] for s in failed}) == capped
    assert all(s["errors"][0]["code"] == 131049 for s in failed)
    assert not {s["id"] for s in failed} & set(utility)   # utility templates are not capped


# --- any Meta error code, either way --------------------------------------------------------

CODES = [4, 80007, 130429, 131049, 131050, 131056, 131057, 131026, 132000, 132001, 132015,
         132016, 368, 190, 131042, 131048]


@pytest.mark.parametrize("code", CODES)
def test_any_meta_error_code_can_be_injected_synchronously(sim, code):
    sim.faults(inject=[{"code": code, "mode": "sync"}])
    resp = sim.send(template_body())
    spec = TABLE[code]
    assert resp.status_code == spec.http_status, resp.text
    err = resp.json()["error"]
    assert err["code"] == code and err["message"] == f"(#{code}) {spec.title}"
    assert err["fbtrace_id"] and err["type"]
    if code in (4, 80007, 190):
        assert "error_data" not in err
        assert ("X-Business-Use-Case-Usage" in resp.headers) == (code != 190)
    else:
        assert err["error_data"] == {"messaging_product": "whatsapp", "details": spec.details}
    assert sim.stats()["rejected_by_code"] == {str(code): 1}


@pytest.mark.parametrize("code", [131049, 131050, 131026, 132015, 368, 131048])
def test_any_meta_error_code_can_come_as_a_failed_status(sim, sim_receiver, code):
    sim.faults(inject=[{"code": code, "mode": "webhook"}])
    wamid = send_ok(sim, template_body(biz="c:9"))
    [failed] = sim_receiver.wait_for(lambda r: statuses_of(r, wamid))
    assert failed["status"] == "failed" and failed["biz_opaque_callback_data"] == "c:9"
    assert failed["errors"] == [{"code": code, "title": TABLE[code].title,
                                 "message": TABLE[code].title,
                                 "error_data": {"details": TABLE[code].details},
                                 "href": failed["errors"][0]["href"]}]


def test_injected_errors_can_be_scoped_to_a_recipient_a_number_or_a_category(sim):
    sim.faults(inject=[
        {"code": 131026, "to": "+44 7700 900001"},
        {"code": 368, "phone_number_id": TWO},
        {"code": 131050, "category": "marketing"},
        {"code": 135999, "title": "Brand new error", "http_status": 409, "details": "new",
         "to": uk(77)},
    ])
    assert sim.send(template_body(to=UK)).json()["error"]["code"] == 131026
    assert sim.send(template_body(to=uk(2))).status_code == 200
    assert sim.send(template_body(to=uk(2)), pnid=TWO).json()["error"]["code"] == 368
    assert sim.send(promo(uk(3))).json()["error"]["code"] == 131050
    odd = sim.send(template_body(to=uk(77)))
    assert odd.status_code == 409
    assert odd.json()["error"]["message"] == "(#135999) Brand new error"
    assert odd.json()["error"]["error_data"]["details"] == "new"
    sim.faults(inject=[{"code": 131048, "rate": 0.3}])
    codes = [sim.send(template_body(to=uk(100 + i))).json().get("error", {}).get("code")
             for i in range(200)]
    assert 30 <= codes.count(131048) <= 95
    assert sim.http.post("/_sim/faults", json={"inject": [{"code": 131048, "mode": "later"}]}).status_code == 400
    assert sim.http.post("/_sim/faults", json={"inject": [{"rate": 1}]}).status_code == 400


def test_error_rates_take_any_meta_code(sim):
    sim.faults(error_rates={"131048": 1.0})
    assert sim.send(template_body()).json()["error"]["code"] == 131048
    sim.faults(error_rates={"131048": 0.0, "80007": 1.0})
    resp = sim.send(template_body())
    assert resp.json()["error"]["code"] == 80007 and "X-Business-Use-Case-Usage" in resp.headers
    assert sim.http.post("/_sim/faults", json={"error_rates": {"999999": 0.1}}).status_code == 400


# --- held for quality assessment (template pacing) ---------------------------------------

def test_held_template_messages_are_released_later_and_only_templates_are_held(sim, sim_receiver):
    sim.faults(held_for_quality_rate=1.0, held_release_s=[600, 600])
    sim.clock(frozen=True)
    resp = sim.send(template_body(to=UK))
    assert resp.json()["messages"][0]["message_status"] == "held_for_quality_assessment"
    held = resp.json()["messages"][0]["id"]
    sim.control("inbound", {"phone_number_id": ONE, "from": uk(5), "text": "hi"})
    text = sim.send(text_body(to=uk(5)))
    assert text.json()["messages"][0]["message_status"] == "accepted"   # free-form: never held
    sim.clock(advance_s=599)
    time.sleep(0.2)
    assert statuses_of(sim_receiver, held) == []
    assert sim.stats()["held_for_quality"] == 1
    sim.clock(advance_s=2)
    wait_for(lambda: sim.stats()["held_for_quality"] == 0, 10, "the release")
    sim.clock(advance_s=1)
    assert {"sent", "delivered"} <= {s["status"] for s in
                                     sim_receiver.wait_for(lambda r: len(statuses_of(r, held)) >= 2
                                                           and statuses_of(r, held))}
    stats = sim.stats()
    assert stats["held"] == 1 and stats["released"] == 1 and stats["held_for_quality"] == 0


def test_pausing_a_template_drops_its_held_messages_with_132015(sim, sim_receiver):
    sim.faults(held_for_quality_rate=1.0, held_release_s=[600, 600])
    sim.clock(frozen=True)
    held = [send_ok(sim, template_body(to=uk(i), biz=f"c:{i}")) for i in range(3)]
    other = send_ok(sim, template_body(to=uk(9), name="hello_world", params=None))
    out = sim.control("template_status", {"waba_id": WABA_ONE, "name": "order_update",
                                          "language": "en_US", "status": "PAUSED"})
    assert out["events"][0]["held_dropped"] == 3
    [paused] = sim_receiver.wait_for(lambda r: r.changes("message_template_status_update"))
    assert paused["event"] == "PAUSED" and paused["other_info"]["title"] == "FIRST_PAUSE"
    sim.clock(advance_s=0.1)
    for i, wamid in enumerate(held):
        [failed] = sim_receiver.wait_for(lambda r, w=wamid: statuses_of(r, w))
        assert failed["status"] == "failed" and failed["errors"][0]["code"] == 132015
        assert failed["biz_opaque_callback_data"] == f"c:{i}"
    # The other template's held message is still released in its time; the dropped
    # ones never go out.
    sim.clock(advance_s=601)
    wait_for(lambda: sim.stats()["held_for_quality"] == 0, 10, "the release")
    sim.clock(advance_s=1)
    sim_receiver.wait_for(lambda r: any(s["status"] == "sent" for s in statuses_of(r, other)))
    sim.quiet()
    assert all(len(statuses_of(sim_receiver, w)) == 1 for w in held)
    assert sim.stats()["failed_later_by_code"] == {"132015": 3}


# --- webhook delivery: batches and retries over hours ------------------------------------

def test_inbound_messages_come_batched_up_to_batch_max(sim, sim_receiver):
    sim.clock(frozen=True)
    for i in range(250):    # all due in one flush
        sim.control("inbound", {"phone_number_id": ONE, "from": uk(i), "text": f"m{i}",
                                "delay_s": 1})
    sim.clock(advance_s=1.5)
    sim_receiver.wait_for(lambda r: len(r.messages()) == 250)
    values = [v for v in sim_receiver.changes() if v.get("messages")]
    assert sorted(len(v["messages"]) for v in values) == [50, 100, 100]
    for value in values:
        assert {c["wa_id"] for c in value["contacts"]} == {m["from"] for m in value["messages"]}
    assert sim.stats()["numbers"][ONE]["inbound"] == 250
    sim_receiver.clear()
    sim.faults(webhook={"batch_max": 1000})
    for i in range(300):
        sim.control("inbound", {"phone_number_id": TWO, "from": uk(i), "text": "again",
                                "delay_s": 1})
    sim.clock(advance_s=1.5)
    [value] = sim_receiver.wait_for(lambda r: [v for v in r.changes() if len(v.get("messages", ())) == 300])
    assert len(value["contacts"]) == 300


def test_webhooks_are_retried_with_back_off_over_hours_for_7_days(sim, sim_receiver):
    sim.profile("quiet")
    sim.faults(statuses={"sent_delay_ms": [0, 0], "delivered_delay_ms": [0, 0]})
    sim.clock(frozen=True)
    sim_receiver.fail_next(100_000)
    send_ok(sim, template_body())
    sim.clock(advance_s=0.05)

    def failed() -> int:
        return sim.stats()["webhooks"]["posts_failed"]

    def next_attempt(before: float, after: float, n: int) -> None:
        """Attempt n+1 comes no sooner than ``before`` s and by ``after`` s."""
        sim.clock(advance_s=before)
        time.sleep(0.15)
        assert failed() == n, f"attempt {n + 1} came before {before} s"
        sim.clock(advance_s=after - before)
        wait_for(lambda: failed() == n + 1, 10, f"attempt {n + 1}")

    wait_for(lambda: failed() == 1, 10, "the first attempt")
    n = 1
    for k in range(12):                     # 1 s, 2 s, 4 s ... 34 min: the gaps grow
        next_attempt(0.79 * 2 ** k, 1.21 * 2 ** k, n)
        n += 1
    next_attempt(0.79 * 3600, 1.21 * 3600, n)   # then at most an hour apart
    n += 1
    hooks = sim.stats()["webhooks"]
    assert hooks["gave_up"] == 0 and hooks["pending"] == 1
    sim.clock(advance_s=5.5 * 24 * 3600)    # still retried after five and a half days
    wait_for(lambda: failed() == n + 1, 10, "a retry days later")
    assert sim.stats()["webhooks"]["gave_up"] == 0
    sim.clock(advance_s=1.5 * 24 * 3600)    # and given up after seven
    wait_for(lambda: sim.stats()["webhooks"]["gave_up"] == 1, 10, "giving up")
    assert sim.stats()["webhooks"]["pending"] == 0 and sim_receiver.posts == []
