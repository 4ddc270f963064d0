"""worker.graph against the simulator over real HTTP: Meta's envelopes, faults, secrets."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import orjson

from worker.graph import GraphClient, SendResult, parse_error, regain_after_s, send_result

try:  # tests/ is a rootless directory under pytest's default import mode
    from sim_fixtures import NUMBERS, VERSION, template_body, text_body
except ImportError:  # tests/ became a package
    from tests.sim_fixtures import NUMBERS, VERSION, template_body, text_body

pytest_plugins = ["sim_fixtures"] if __package__ in (None, "") else ["tests.sim_fixtures"]

ONE = NUMBERS[0]
PATH = f"{VERSION}/{ONE['phone_number_id']}/messages"


def send(url: str, *bodies, token: str = ONE["token"], path: str = PATH,
         concurrency: int = 8, timeout: httpx.Timeout | None = None) -> list[SendResult]:
    async def go() -> list[SendResult]:
        kwargs = {"timeout": timeout} if timeout else {}
        async with GraphClient(url, concurrency, **kwargs) as graph:
            return await asyncio.gather(*(graph.send(path, token, b) for b in bodies))
    return asyncio.run(go())


def test_success_envelope_gives_wamid_and_message_status(sim):
    [r] = send(sim.url, template_body(biz="c1:7"))
    assert r.ok and r.wamid.startswith("wamid.")
    assert (r.message_status, r.error_code, r.http_status, r.error_message) == \
        ("accepted", None, 200, None)
    [entry] = sim.ledger()
    assert entry["wamid"] == r.wamid and entry["biz_opaque_callback_data"] == "c1:7"


def test_body_may_be_raw_json_text_as_the_database_renders_it(sim):
    raw = orjson.dumps(template_body()).decode()
    [a, b] = send(sim.url, raw, raw.encode())
    assert a.ok and b.ok and a.wamid != b.wamid


def test_held_for_quality_assessment_is_a_success(sim):
    sim.faults(held_for_quality_rate=1.0)
    [r] = send(sim.url, template_body())
    assert r.ok and r.message_status == "held_for_quality_assessment"


def test_error_envelope_is_parsed_by_code(sim):
    [r] = send(sim.url, template_body(name="no_such_template"))
    assert not r.ok
    assert (r.error_code, r.http_status) == (132001, 400)
    assert r.error_message.startswith("(#132001) ")
    assert "OAuthException" in r.error_message and "fbtrace_id" in r.error_message


def test_free_form_outside_the_window_is_131047(sim):
    [r] = send(sim.url, text_body())
    assert (r.wamid, r.error_code) == (None, 131047)


def test_rate_limit_is_130429(sim):
    sim.faults(rate_limit_burst={"seconds": 5, "phone_number_id": ONE["phone_number_id"]})
    [r] = send(sim.url, template_body())
    assert r.error_code == 130429 and "subcode 2494055" in r.error_message


def test_server_errors_with_an_envelope_keep_their_code(sim):
    sim.faults(error_rates={"http_500": 1.0})
    [r] = send(sim.url, template_body())
    assert (r.error_code, r.http_status) == (1, 500)
    sim.faults(error_rates={"http_500": 0.0, "131016": 1.0})
    [r] = send(sim.url, template_body())
    assert (r.error_code, r.http_status) == (131016, 503)


def test_bad_token_is_190_and_the_token_appears_nowhere(sim):
    secret = "EAAG-super-secret-token-123"
    [r] = send(sim.url, template_body(), token=secret)
    assert (r.error_code, r.http_status) == (190, 401)
    assert secret not in repr(r)


def test_the_usage_header_says_when_access_comes_back():
    usage = orjson.dumps({"102290129340398": [
        {"type": "whatsapp_business_management", "call_count": 100, "total_cputime": 7, "total_time": 9,
         "estimated_time_to_regain_access": 25},
        {"type": "messenger", "call_count": 4, "estimated_time_to_regain_access": 0}]})
    answer = orjson.dumps({"error": {"message": "(#80007) Rate limit issues", "code": 80007}})
    r = send_result(400, answer, raw_headers=[(b"Content-Type", b"application/json"),
                                               (b"X-Business-Use-Case-Usage", usage)])
    assert (r.error_code, r.retry_after_s) == (80007, 1500)
    # Under the limit, absent or garbled: Meta said nothing, the error's own backoff applies.
    assert regain_after_s([(b"x-business-use-case-usage", b'{"1": [{"estimated_time_to_regain_access": 0}]}')]) is None
    assert regain_after_s([(b"x-business-use-case-usage", b"not json")]) is None
    assert regain_after_s(None) is None


def test_token_is_scrubbed_even_if_an_answer_echoes_it():
    r = send_result(400, orjson.dumps({"error": {"message": "bad token tok-xyz", "code": 190}}),
                    "tok-xyz")
    assert r.error_code == 190 and "tok-xyz" not in r.error_message


def test_dropped_connection_is_a_transient_error_without_code(sim):
    sim.faults(drop_connection_rate=1.0, drop_after_accept_share=0.0)
    [r] = send(sim.url, template_body())
    assert (r.wamid, r.error_code, r.http_status) == (None, None, None)
    assert r.error_message.startswith("connection error")
    assert r.unsure            # the request went out: Meta may have it


def test_the_pool_recovers_after_dropped_connections(sim):
    async def go() -> tuple[list[SendResult], list[SendResult]]:
        async with GraphClient(sim.url, 4) as graph:
            sim.faults(drop_connection_rate=1.0, drop_after_accept_share=0.5)
            dropped = await asyncio.gather(*(graph.send(PATH, ONE["token"], template_body(
                to=f"1555888{i:04d}")) for i in range(8)))
            sim.faults(drop_connection_rate=0.0)
            ok = await asyncio.gather(*(graph.send(PATH, ONE["token"], template_body(
                to=f"1555999{i:04d}")) for i in range(8)))
            return dropped, ok
    dropped, ok = asyncio.run(go())
    assert all(r.error_code is None and r.wamid is None for r in dropped)
    assert all(r.ok for r in ok)


def test_connection_refused_is_a_transient_error_without_code():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]       # closed when the block ends: nobody listens
    [r] = send(f"http://127.0.0.1:{port}", template_body())
    assert (r.wamid, r.error_code, r.http_status) == (None, None, None)
    assert r.error_message.startswith("connection error")
    assert not r.unsure        # nothing was sent: it may go again at once


def test_slow_answer_times_out_without_code(sim):
    sim.faults(latency_ms={"median": 800, "p99": 900})
    [r] = send(sim.url, template_body(), timeout=httpx.Timeout(0.2, connect=1.0))
    assert (r.wamid, r.error_code, r.http_status, r.error_message, r.unsure) == \
        (None, None, None, "timeout", True)
    # The request still reaches Meta after the client gave up: a timeout is no proof the
    # message was not sent (the database reconciles it against its status webhooks before
    # any resend). Wait for it here, so it cannot land in the next test's ledger.
    deadline = time.monotonic() + 30
    while sim.stats()["accepted"] < 1:
        assert time.monotonic() < deadline, "the slow request never reached the simulator"
        time.sleep(0.05)


def test_answers_without_an_envelope():
    r = send_result(502, b"<html>Bad Gateway</html>")
    assert (r.error_code, r.http_status) == (None, 502)
    assert r.error_message.startswith("HTTP 502")
    assert send_result(503, b"").error_code is None
    r = send_result(200, b'{"success": true}')
    assert (r.wamid, r.error_code, r.http_status) == (None, None, 200)


def test_parse_error_reads_every_field():
    err = parse_error({"error": {"message": "(#131000) Something went wrong", "type": "OAuthException",
                                 "code": 131000, "error_subcode": 99,
                                 "error_data": {"messaging_product": "whatsapp", "details": "why"},
                                 "fbtrace_id": "Axyz"}})
    assert (err.code, err.type, err.subcode, err.details, err.fbtrace_id) == \
        (131000, "OAuthException", 99, "why", "Axyz")
    assert parse_error({"messages": []}) is None and parse_error(None) is None


def test_concurrent_sends_are_bounded_and_all_answered(sim):
    bodies = [template_body(to=f"1555123{i:04d}", biz=f"t:{i}") for i in range(60)]
    results = send(sim.url, *bodies, concurrency=4)
    assert all(r.ok for r in results)
    assert len({r.wamid for r in results}) == 60
    assert sim.stats()["duplicates"] == 0


def test_request_keeps_httpx_interface_for_other_graph_calls(sim):
    async def go() -> httpx.Response:
        async with GraphClient(sim.url, 2) as graph:
            return await graph.request("GET", f"{VERSION}/{ONE['waba_id']}/message_templates",
                                       ONE["token"], params={"limit": 2})
    resp = asyncio.run(go())
    assert isinstance(resp, httpx.Response) and resp.status_code == 200
    assert len(resp.json()["data"]) == 2
