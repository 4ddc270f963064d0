"""Send API benchmark: POST /v1/messages accepted into the queue, every request sent twice.

Sets up its own database on the project's cluster (a tenant, a number, an approved
template, an API key), starts a real `python -m api` server, and drives it with wrk
(one thread; 32 connections by default) for --seconds:

* send_api_rps            new messages accepted (201) per second: each a template to a new
                          phone, with its own Idempotency-Key, queued on the reply queue
* send_api_requests_per_s every request per second, replays included: each connection
                          sends every request twice in a row (same key, same body)
* idempotent_duplicates   outbound messages beyond one per key (0 when the key holds)
* baseline_rps            the same wrk against GET /v1/numbers (an authenticated one-row
                          route), measured in the same run: the API's ceiling on this
                          machine; ratio = send_api_requests_per_s / baseline_rps
* p99_ms                  wrk's 99th percentile latency of the send run

No worker runs: the figure is the rate at which requests become queued messages.
Progress on stderr; one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
from bench_webhooks import ApiServer, ensure_wrk
from common import create_tenant, logger, register_number, upsert_template

from pgwa import scratch
from pgwa.queries import queries

BENCH_DB = "pgwa_bench_send_api"
WABA_ID = "700000000000031"
PHONE_NUMBER_ID = "700000000000032"

# Each connection numbers its requests; request 2k and 2k+1 are the same message (same
# Idempotency-Key, same body), so every message is sent twice. Status codes are counted
# per thread and summed in done().
SEND_LUA = """
local counter, n, created, replayed, other = 0, 0, 0, 0, 0
local threads = {}
local id = 0
setup = function(thread)
  id = id + 1
  thread:set("id", id)
  table.insert(threads, thread)
end
init = function(args)
  number_id = args[1]
  prefix = string.format("1%02d", tonumber(id) or 0)
end
request = function()
  n = n + 1
  if n % 2 == 1 then counter = counter + 1 end
  local phone = string.format("%s%08d", prefix, counter)
  local body = '{"number_id": ' .. number_id .. ', "to": "+' .. phone .. '", "message": {"type": "template", ' ..
    '"name": "order_update", "language": "en_US", "params": ["Ana", "A-' .. counter .. '", "ACME"]}}'
  return wrk.format("POST", "/v1/messages", {["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. key, ["Idempotency-Key"] = "k-" .. prefix .. "-" .. counter}, body)
end
response = function(status, headers, body)
  if status == 201 then created = created + 1 elseif status == 200 then replayed = replayed + 1
  else other = other + 1 end
end
done = function(summary, latency, requests)
  local c, r, o = 0, 0, 0
  for _, t in ipairs(threads) do
    c = c + t:get("created"); r = r + t:get("replayed"); o = o + t:get("other")
  end
  io.write(string.format("COUNTS %d %d %d\\n", c, r, o))
end
"""
# wrk copies thread globals back for thread:get only when they are globals: mirror them.
SEND_LUA = SEND_LUA.replace("local counter, n, created, replayed, other = 0, 0, 0, 0, 0",
                            "counter, n, created, replayed, other = 0, 0, 0, 0, 0")

BASELINE_LUA = """
init = function(args) end
request = function()
  return wrk.format("GET", "/v1/numbers", {["Authorization"] = "Bearer " .. key})
end
"""

log = logger("bench-send-api")


def world(url: str) -> tuple[int, str]:
    with psycopg.connect(url, autocommit=True) as conn:
        tenant = create_tenant(conn, "send-api bench")
        number = register_number(conn, tenant, PHONE_NUMBER_ID, WABA_ID, throughput_mps=1000)
        upsert_template(conn, tenant, WABA_ID, "order_update", components=[
            {"type": "BODY", "text": "Hi {{1}}, your order {{2}} from {{3}} is on its way."}])
        key = conn.execute(queries["create_api_key"], {
            "tenant_id": tenant, "name": "bench", "scope": "send", "expires_at": None,
            "rate_limit_per_minute": 1_000_000}).fetchone()[3]
    return number, key


def wrk_run(wrk: str, port: int, script: Path, path: str, connections: int, seconds: int,
            args: list[str]) -> dict:
    out = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
                          f"http://127.0.0.1:{port}{path}", "--", *args],
                         capture_output=True, text=True, check=True).stdout
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    counts = re.search(r"COUNTS (\d+) (\d+) (\d+)", out)
    duration = re.search(r"requests in ([\d.]+)(ms|s|m)", out)
    seconds_run = float(duration.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[duration.group(2)]
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p99_ms": round(float(p99.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)], 2),
            "seconds": seconds_run,
            "counts": tuple(int(x) for x in counts.groups()) if counts else None}


def one_run(wrk: str, connections: int, seconds: int, tmp: Path) -> dict:
    url = scratch.fresh_database(BENCH_DB)
    number, key = world(url)
    (tmp / "send.lua").write_text(f'key = "{key}"\n' + SEND_LUA)
    (tmp / "base.lua").write_text(f'key = "{key}"\n' + BASELINE_LUA)
    api = ApiServer(url)
    try:
        base = wrk_run(wrk, api.port, tmp / "base.lua", "/v1/numbers", connections, seconds, [])
        log(f"baseline GET /v1/numbers: {base['rps']:,.0f} req/s")
        send = wrk_run(wrk, api.port, tmp / "send.lua", "/v1/messages", connections, seconds, [str(number)])
    finally:
        api.stop()
    created, replayed, other = send["counts"]
    with psycopg.connect(url, autocommit=True) as conn:
        outbound, keys, recipients = conn.execute("""
            SELECT count(*), (SELECT count(*) FROM core.api_sends), count(DISTINCT contact_id)
            FROM core.outbound_messages WHERE kind = 'api'""").fetchone()
        queued = conn.execute("SELECT queue_length FROM pgmq.metrics(core.reply_queue(%s))",
                              (number,)).fetchone()[0]
    log(f"send: {created:,} created, {replayed:,} replayed, {other} other in {send['seconds']:.1f} s")
    return {"send_api_rps": round(created / send["seconds"], 1), "send_api_requests_per_s": send["rps"],
            "baseline_rps": base["rps"], "ratio": round(send["rps"] / base["rps"], 3),
            "p99_ms": send["p99_ms"], "baseline_p99_ms": base["p99_ms"],
            "created": created, "replayed": replayed, "errors": other, "outbound": outbound,
            "queued": queued, "idempotent_duplicates": outbound - keys + (outbound - recipients)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    wrk = ensure_wrk()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            log(f"run {i + 1}/{args.runs}")
            runs.append(one_run(wrk, args.connections, args.seconds, Path(tmp)))
    scratch.drop_database(BENCH_DB)

    def spread(key: str) -> dict:
        values = [r[key] for r in runs]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    result = {key: statistics.median(r[key] for r in runs)
              for key in ("send_api_rps", "send_api_requests_per_s", "baseline_rps", "ratio", "p99_ms")}
    result.update({
        "idempotent_duplicates": sum(r["idempotent_duplicates"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "spread": {k: spread(k) for k in ("send_api_rps", "baseline_rps", "ratio")},
        "runs": runs, "connections": args.connections, "seconds": args.seconds,
        "targets": {"send_api_rps": 1000, "idempotent_duplicates": 0},
    })
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
