"""Send API benchmark: POST /v1/messages accepted into the queue, and idempotency under load.

Sets up its own database on the project's cluster (a tenant, a number, an approved
template, an API key), starts a real API server (`python -m api`'s uvicorn settings, with
one extra bare route for the baseline) and drives it with wrk (one thread; 32
connections by default) for --seconds per run:

* send_api_rps            new messages accepted (201) per second: each a template to a new
                          phone, with its own Idempotency-Key, queued on the reply queue
* send_api_requests_per_s every request per second in a second run where each message is
                          sent twice (same key, same body, on two connections at once)
* idempotent_duplicates   outbound messages beyond one per key and recipient in that run
                          (0 when the key holds)
* baseline_rps            the same wrk against GET /bench/select: a bare Starlette endpoint
                          running SELECT 1 through the API's own pool, in the same server and
                          run: the ceiling of "one request, one statement" on this machine;
                          ratio = send_api_rps / baseline_rps
* wrk_cpu_share           the load generator's CPU time over the run's wall time and cores
                          (it competes with the server for the same cores)
* p99_ms                  wrk's 99th percentile latency of the send run
* api_cpu_ms_per_send     the API server's CPU time (user + system) per accepted send in the
                          send run, db_cpu_ms_per_send the CPU time of the API's PostgreSQL
                          backends, and db_ms_per_send PostgreSQL's execution time (wall) of the
                          send API's statements (pg_stat_statements) per accepted send: what a
                          send costs, which other work on the machine changes less than a rate
* loadavg_1m              the machine's one-minute load average as the send run began (other
                          work on the same cores lowers both figures; the ratio moves less)

No worker runs: the figure is the rate at which requests become queued messages.
`measure(seconds, connections, runs)` is what bench/bench_audiences.py calls.
Progress on stderr; one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from bench_webhooks import ensure_wrk
from common import Server, create_tenant, logger, register_number, upsert_template

from pgwa import scratch
from pgwa.local.stack import free_port
from pgwa.queries import queries

BENCH_DB = "pgwa_bench_send_api"
WABA_ID = "700000000000031"
PHONE_NUMBER_ID = "700000000000032"

# The thread numbers its requests; with copies = 2, requests 2k+1 and 2k+2 are the same
# message (same Idempotency-Key, same body) and go out on two connections at once, so
# every message is sent twice, concurrently; with copies = 1 every request is new.
# Status codes are counted per thread and summed in done().
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
  copies = tonumber(args[2])
  prefix = string.format("1%s%02d", args[3], tonumber(id) or 0)
end
request = function()
  n = n + 1
  if n % copies == 1 or copies == 1 then counter = counter + 1 end
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
  return wrk.format("GET", "/bench/select")
end
"""

# The API app as `python -m api` serves it, plus the baseline route: SELECT 1 through the
# JSON API's own connection pool.
SERVER = """
import sys
import uvicorn
from starlette.responses import Response
from starlette.routing import Route
from api.app import create_app

async def select_one(request):
    async with request.app.state.json_api.pool.connection() as conn:
        row = await (await conn.execute("SELECT 1")).fetchone()
    return Response(b'{"ok": %d}' % row[0], media_type="application/json")

def app():
    return create_app(routes=[Route("/bench/select", select_one)])

uvicorn.run(app, factory=True, host="127.0.0.1", port=int(sys.argv[1]), http="httptools", loop="uvloop",
            access_log=False, server_header=False, log_level="warning", timeout_keep_alive=75)
"""

log = logger("bench-send-api")


def api_server(url: str) -> Server:
    """The API server with the baseline route, on a free port."""
    port = free_port()
    return Server("bench-send-api", [sys.executable, "-c", SERVER, str(port)], port, timeout=30,
                  env={"DATABASE_URL": url, "PGWA_API_HOST": "127.0.0.1", "PGWA_API_PORT": str(port)})


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
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    out = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
                          f"http://127.0.0.1:{port}{path}", "--", *args],
                         capture_output=True, text=True, check=True).stdout
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    counts = re.search(r"COUNTS (\d+) (\d+) (\d+)", out)
    duration = re.search(r"requests in ([\d.]+)(ms|s|m)", out)
    seconds_run = float(duration.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[duration.group(2)]
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p99_ms": round(float(p99.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)], 2),
            "seconds": seconds_run,
            "wrk_cpu_share": round(cpu / wall / (os.cpu_count() or 1), 3),
            "counts": tuple(int(x) for x in counts.groups()) if counts else None}


# PostgreSQL's time in the send API's statements so far, in this database (ms).
DB_TIME = """SELECT coalesce(sum(total_exec_time), 0)::float8 FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND (query LIKE '%%api.send_messages(%%' OR query LIKE '%%api.authenticate_many(%%' OR query LIKE '%%pg_notify(%%')"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backends_cpu(url: str) -> dict[int, float]:
    """CPU seconds of each backend the API server holds (application_name pgwa-api) on this database."""
    with psycopg.connect(url, autocommit=True) as conn:
        pids = [r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'pgwa-api'")]
    cpu = {}
    for pid in pids:
        try:
            cpu[pid] = cpu_seconds(pid)
        except OSError:         # another machine's server, or gone
            pass
    return cpu


def db_ms(url: str) -> float:
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            return conn.execute(DB_TIME).fetchone()[0]
    except psycopg.Error:       # no pg_stat_statements here
        return float("nan")


def one_run(wrk: str, connections: int, seconds: int, tmp: Path) -> dict:
    url = scratch.fresh_database(BENCH_DB)
    number, key = world(url)
    (tmp / "send.lua").write_text(f'key = "{key}"\n' + SEND_LUA)
    (tmp / "base.lua").write_text(BASELINE_LUA)
    api = api_server(url)
    try:
        base = wrk_run(wrk, api.port, tmp / "base.lua", "/bench/select", connections, seconds, [])
        log(f"baseline GET /bench/select (SELECT 1 through the pool): {base['rps']:,.0f} req/s")
        load = os.getloadavg()[0]
        cpu_before, db_before, backends_before = cpu_seconds(api.proc.pid), db_ms(url), backends_cpu(url)
        new = wrk_run(wrk, api.port, tmp / "send.lua", "/v1/messages", connections, seconds, [str(number), "1", "1"])
        cpu_send, db_send = cpu_seconds(api.proc.pid) - cpu_before, db_ms(url) - db_before
        db_cpu = sum(t - backends_before.get(pid, 0.0) for pid, t in backends_cpu(url).items())
        log(f"send, every request new: {new['counts'][0] / new['seconds']:,.0f} accepted/s")
        # The second run's phones and keys start with another digit: all new again.
        twice = wrk_run(wrk, api.port, tmp / "send.lua", "/v1/messages", connections, seconds,
                        [str(number), "2", "2"])
    finally:
        api.stop()
    created, replayed, other = twice["counts"]
    with psycopg.connect(url, autocommit=True) as conn:
        # The second run's messages: their keys start with "k-12".
        outbound, keys, recipients = conn.execute("""
            SELECT count(*), count(DISTINCT s.idempotency_key), count(DISTINCT o.contact_id)
            FROM core.outbound_messages o
            JOIN core.contacts c ON c.contact_id = o.contact_id AND c.wa_id LIKE '12%'
            LEFT JOIN core.api_sends s ON s.outbound_id = o.outbound_id
            WHERE o.kind = 'api'""").fetchone()
    log(f"send, every message twice: {created:,} created, {replayed:,} replayed, {other} other "
        f"in {twice['seconds']:.1f} s")
    accepted = new["counts"][0] / new["seconds"]
    return {"send_api_rps": round(accepted, 1), "send_api_requests_per_s": twice["rps"],
            "baseline_rps": base["rps"], "ratio": round(accepted / base["rps"], 3),
            "p99_ms": new["p99_ms"], "baseline_p99_ms": base["p99_ms"], "twice_p99_ms": twice["p99_ms"],
            "loadavg_1m": round(load, 2),
            "api_cpu_ms_per_send": round(cpu_send * 1000 / max(new["counts"][0], 1), 3),
            "db_cpu_ms_per_send": round(db_cpu * 1000 / max(new["counts"][0], 1), 3),
            "db_ms_per_send": round(db_send / max(new["counts"][0], 1), 3),
            "wrk_cpu_share": new["wrk_cpu_share"], "baseline_wrk_cpu_share": base["wrk_cpu_share"],
            "errors": new["counts"][2] + other, "created": created, "replayed": replayed, "outbound": outbound,
            "idempotent_duplicates": (outbound - keys) + (outbound - recipients)}


def measure(seconds: int = 10, connections: int = 32, runs: int = 3) -> dict:
    """The benchmark's figures: medians over ``runs`` runs (each a fresh database)."""
    wrk = ensure_wrk()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            log(f"run {i + 1}/{runs}")
            results.append(one_run(wrk, connections, seconds, Path(tmp)))
    scratch.drop_database(BENCH_DB)

    def spread(key: str) -> dict:
        values = [r[key] for r in results]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    result = {key: statistics.median(r[key] for r in results)
              for key in ("send_api_rps", "send_api_requests_per_s", "baseline_rps", "ratio", "p99_ms",
                          "wrk_cpu_share", "loadavg_1m", "api_cpu_ms_per_send", "db_cpu_ms_per_send",
                          "db_ms_per_send")}
    result.update({
        "idempotent_duplicates": sum(r["idempotent_duplicates"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "spread": {k: spread(k) for k in ("send_api_rps", "baseline_rps", "ratio")},
        "runs": results, "connections": connections, "seconds": seconds,
        "targets": {"send_api_rps": 1000, "idempotent_duplicates": 0},
    })
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(measure(args.seconds, args.connections, args.runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
