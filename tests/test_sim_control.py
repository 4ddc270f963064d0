"""Templates listing, numbers, the ledger and stats, and the control endpoints."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import time

import httpx

import sim.ledger
from sim.ledger import Ledger, NumberStats
from sim.probe import LoopProbe
from tests.sim_fixtures import NUMBERS, VERSION, template_body

ONE, TWO, THREE = (n["phone_number_id"] for n in NUMBERS)
WABA_ONE, WABA_THREE = NUMBERS[0]["waba_id"], NUMBERS[2]["waba_id"]


def list_templates(sim, waba=WABA_ONE, token="tok-one", url=None, **params):
    return sim.http.get(url or f"/{VERSION}/{waba}/message_templates", params=params or None,
                        headers={"Authorization": f"Bearer {token}"})


def test_templates_are_listed_with_cursor_paging(sim):
    everything = list_templates(sim, limit=100).json()
    assert "next" not in everything["paging"]
    names = [(t["name"], t["language"]) for t in everything["data"]]
    assert len(names) == 14     # sim/templates.json
    first = everything["data"][0]
    assert set(first) >= {"id", "name", "language", "status", "category", "components",
                          "parameter_format"}
    seen = []
    page = list_templates(sim, limit=3).json()
    pages = 1
    while True:
        assert len(page["data"]) <= 3
        assert set(page["paging"]["cursors"]) == {"before", "after"}
        seen += [(t["name"], t["language"]) for t in page["data"]]
        if "next" not in page["paging"]:
            break
        page = list_templates(sim, url=page["paging"]["next"]).json()
        pages += 1
    assert seen == names and pages == 5
    # `before` walks back: the page before the last one is the fourth page.
    back = list_templates(sim, limit=3, before=page["paging"]["cursors"]["before"]).json()
    assert [(t["name"], t["language"]) for t in back["data"]] == names[9:12]
    assert "previous" in back["paging"]


def test_templates_list_filters_and_fields(sim):
    body = list_templates(sim, status="PAUSED", fields="name,status").json()
    assert body["data"] == [{"name": "winter_sale", "status": "PAUSED",
                             "id": body["data"][0]["id"]}]


def test_templates_need_a_token_of_that_waba(sim):
    assert list_templates(sim, token="nope").status_code == 401
    resp = list_templates(sim, waba=WABA_THREE, token="tok-one")
    assert resp.status_code == 400 and resp.json()["error"]["error_subcode"] == 33
    assert list_templates(sim, waba=WABA_THREE, token="tok-three").status_code == 200


def test_templates_can_be_added_per_waba(sim):
    tpl = {"name": "welcome_back", "language": "en_US", "category": "MARKETING",
           "components": [{"type": "BODY", "text": "Welcome back {{1}}!"}]}
    sim.control("templates", {"waba_id": WABA_THREE, "templates": [tpl]})
    body = template_body(name="welcome_back", params=["Ana"])
    assert sim.send(body, pnid=THREE).status_code == 200
    assert sim.send(body, pnid=ONE).json()["error"]["code"] == 132001


def test_numbers_upsert_is_idempotent(sim):
    new = {"phone_number_id": "444000444", "waba_id": "900000004",
           "display_phone_number": "15550004444", "token": "tok-four", "throughput_mps": 1000}
    for _ in range(2):
        sim.control("numbers", new)
    numbers = sim.http.get("/_sim/numbers").json()["numbers"]
    assert [n for n in numbers if n["phone_number_id"] == "444000444"] == [
        {**new, "app_secret": None, "webhook_url": None, "throughput_mps": 1000.0,
         "verified_name": "Sim Business 4444", "quality_rating": "GREEN", "business_id": None,
         "coexistence": False}]
    # A new WABA gets the seed templates.
    assert sim.send(template_body(), pnid="444000444", token="tok-four").status_code == 200
    # A partial upsert keeps the other fields.
    sim.control("numbers", {"phone_number_id": "444000444", "throughput_mps": 5})
    [four] = [n for n in sim.http.get("/_sim/numbers").json()["numbers"]
              if n["phone_number_id"] == "444000444"]
    assert four["token"] == "tok-four" and four["throughput_mps"] == 5.0


def test_phone_number_fields(sim):
    resp = sim.http.get(f"/{VERSION}/{ONE}", params={"fields": "throughput"},
                        headers={"Authorization": "Bearer tok-one"})
    assert resp.json() == {"throughput": {"level": "STANDARD"}, "id": ONE}


def test_a_token_reads_the_numbers_of_its_wabas_and_nothing_else(sim):
    def get(path: str, token: str, **params) -> httpx.Response:
        return sim.http.get(f"/{VERSION}/{path}", params=params, headers={"Authorization": f"Bearer {token}"})

    # tok-two was declared with a number of WABA 900000001, so it reads all of that WABA's.
    node = get(ONE, "tok-two").json()
    assert node["display_phone_number"] == "15550001111" and node["id"] == ONE
    assert node["verified_name"] == "Sim Business 1111" and node["quality_rating"] == "GREEN"
    listed = get("900000001/phone_numbers", "tok-one", limit=1)
    assert listed.json()["data"][0]["id"] == ONE
    after = httpx.get(listed.json()["paging"]["next"], headers={"Authorization": "Bearer tok-one"}).json()
    assert [n["id"] for n in after["data"]] == ["222000222"] and "next" not in after["paging"]
    # Another WABA's number or list: Meta's object error (100, subcode 33, HTTP 400).
    for resp in (get(THREE, "tok-one"), get("900000003/phone_numbers", "tok-one")):
        assert resp.status_code == 400
        assert (resp.json()["error"]["code"], resp.json()["error"]["error_subcode"]) == (100, 33)
    # A token Meta does not know: 190, HTTP 401.
    resp = get(ONE, "tok-nobody")
    assert resp.status_code == 401 and resp.json()["error"]["code"] == 190


def test_read_faults_answer_metas_server_errors(sim):
    sim.faults(read_error_rates={"http_503": 1.0})
    resp = sim.http.get(f"/{VERSION}/{ONE}", headers={"Authorization": "Bearer tok-one"})
    assert resp.status_code == 503 and resp.json()["error"]["code"] == 2
    assert sim.send(template_body()).status_code == 200     # sends are not reads


def test_ledger_records_every_accepted_send(sim):
    wamid = sim.send(template_body(to="15557770001", biz="c1:1")).json()["messages"][0]["id"]
    sim.send(template_body(name="nope"))
    [entry] = sim.ledger()
    assert entry["wamid"] == wamid and entry["phone_number_id"] == ONE
    assert entry["to"] == "15557770001" and entry["type"] == "template"
    assert entry["template"] == "order_update" and entry["biz_opaque_callback_data"] == "c1:1"
    assert entry["time"] <= time.time()
    assert sim.ledger(since=1) == []


def test_ledger_counts_duplicates_by_campaign_tag(sim):
    sends = [
        ("15557770001", "camp-1:a", ONE),
        ("15557770001", "camp-1:b", ONE),   # duplicate of camp-1 for this recipient
        ("15557770001", "camp-1", ONE),     # the whole value is the tag: duplicate again
        ("15557770001", "camp-2:a", ONE),   # another campaign
        ("15557770002", "camp-1:a", ONE),   # another recipient
        ("15557770001", "camp-1:a", TWO),   # another number
        ("15557770001", None, ONE),         # no tag: not counted
        ("15557770001", None, ONE),
        ("15557770003", "camp-2:x", ONE),
        ("15557770003", "camp-2:y", ONE),   # duplicate of camp-2
    ]
    for to, biz, pnid in sends:
        assert sim.send(template_body(to=to, biz=biz), pnid=pnid).status_code == 200
    stats = sim.stats()
    assert stats["accepted"] == len(sends)
    assert stats["duplicates"] == 3
    assert stats["duplicates_by_tag"] == {"camp-1": 2, "camp-2": 1}


def test_rejected_sends_are_not_duplicates(sim):
    sim.faults(error_rates={"131000": 1.0})
    sim.send(template_body(biz="c:1"))
    sim.faults(error_rates={"131000": 0.0})
    sim.send(template_body(biz="c:1"))
    assert sim.stats()["duplicates"] == 0


def test_stats_totals(sim):
    sim.send(template_body())
    sim.send(template_body(name="nope"))
    sim.send(template_body(), token="bad")
    stats = sim.stats()
    assert stats["requests"] == 3 and stats["accepted"] == 1 and stats["rejected"] == 2
    assert stats["rejected_by_code"] == {"132001": 1, "190": 1}
    assert stats["numbers"][ONE]["accepted"] == 1
    assert set(stats["webhooks"]) >= {"posts_ok", "posts_failed", "retries",
                                      "statuses_delivered", "pending"}


def test_reset_clears_the_ledger_and_keeps_numbers(sim):
    sim.control("numbers", {"phone_number_id": "555000555", "waba_id": "900000001",
                            "display_phone_number": "15550005555", "token": "tok-five"})
    sim.send(template_body())
    sim.faults(error_rates={"131000": 1.0})
    sim.control("reset")
    assert sim.ledger() == [] and sim.stats()["requests"] == 0
    assert sim.send(template_body(), pnid="555000555", token="tok-five").status_code == 200
    sim.control("reset", {"numbers": True})
    assert sim.send(template_body(), pnid="555000555", token="tok-five").status_code == 401


def test_the_clock_freezes_moves_forward_only_and_is_reset(sim):
    assert sim.clock() == {"frozen": False, "offset_s": 0.0}
    before = time.time()
    frozen = sim.clock(frozen=True, advance_s=60)
    assert frozen["frozen"] and frozen["offset_s"] >= 59.9
    sim.send(template_body())
    [entry] = sim.ledger()
    assert entry["time"] >= before + 59.99         # the ledger reads the simulator's time
    for bad in ({"advance_s": -1}, {"frozen": "yes"}, {"speed": 2}):
        assert sim.http.post("/_sim/clock", json=bad).status_code == 400
    assert sim.http.get("/_sim/clock").json()["frozen"] is True
    sim.control("reset")
    assert sim.http.get("/_sim/clock").json() == {"frozen": False, "offset_s": 0.0}


def _lines_run(fn) -> int:
    """How many lines of the simulator's Python ``fn()`` executes: a measure of its
    work that no machine's load can change, unlike a stopwatch. Only the simulator's
    own files count, and the collector stays off while it runs: a finaliser left by
    an earlier test (an HTTP client's, say) would otherwise run in the middle and
    add its lines (CI saw 37 against 28 once)."""
    count = 0
    own = os.path.dirname(sim.ledger.__file__)

    def trace(frame, event, _arg):
        nonlocal count
        count += event == "line" and frame.f_code.co_filename.startswith(own)
        return trace

    previous = sys.gettrace()           # a coverage tool's, say
    collecting = gc.isenabled()
    gc.collect()
    gc.disable()
    sys.settrace(trace)
    try:
        fn()
    finally:
        sys.settrace(previous)
        if collecting:
            gc.enable()
    return count


def _ledger(sends: int) -> Ledger:
    ledger = Ledger()
    stats = ledger.number("1")
    t = 1000.0
    for i in range(sends):
        t += 0.0125                      # 80 per second
        stats.attempt(t)
        stats.accept(t)
        ledger.record((t, "1", f"1555{i % 5000:07d}", "template", "x", "en_US",
                       f"camp-{i % 3}:{i}", f"wamid.{i}", "accepted"))
    return ledger


def test_peaks_and_stats_stay_cheap_at_100k_sends():
    ledger = _ledger(100_000)
    # The stats answer does the same work at 100 sends as at 100,000: nothing scans the ledger.
    small = _ledger(100)
    assert _lines_run(lambda: ledger.stats({"1": 80})) == _lines_run(lambda: small.stats({"1": 80}))
    out = ledger.stats({"1": 80})
    assert out["accepted"] == 100_000
    assert out["numbers"]["1"]["peak_1s_rate"] in (80, 81)
    assert out["duplicates"] == 100_000 - 15_000


def test_peak_windows_slide():
    stats = NumberStats()
    for t in (0.0, 0.5, 0.99, 1.2, 1.3, 2.5):
        stats.accept(t)
    assert stats.peak_1s_rate == 4          # 0.5, 0.99, 1.2 and 1.3 fit in (0.3, 1.3]


def test_loop_probe_reports_a_stalled_loop_and_collector_pauses():
    probe = LoopProbe()

    async def stall() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(probe.run(stop))
        await asyncio.sleep(0.05)
        time.sleep(0.08)  # noqa: ASYNC251 (the point: block the loop, the probe's tick comes late)
        gc.collect()
        await asyncio.sleep(0.05)
        stop.set()
        await task

    asyncio.run(stall())
    report = probe.as_dict()
    # At least the stall made on purpose (a loaded machine may add its own).
    assert report["stalls_over_50ms"] >= 1 and report["max_lag_ms"] >= 60, report
    assert report["gc_total_ms"] > 0
    assert probe._on_gc not in gc.callbacks      # removed when the probe stops


def test_stats_report_the_loop(sim):
    assert set(sim.stats()["loop"]) == {"max_lag_ms", "stalls_over_50ms", "gc_max_ms", "gc_total_ms", "gc_max_ms_by_generation"}
