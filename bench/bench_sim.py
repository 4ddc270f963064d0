"""Accepted sends per second of ONE simulator process while it emits webhooks.

Starts a cheap webhook receiver (answers 200) and the simulator as subprocesses,
then drives ``POST /messages`` from this process with many concurrent keep-alive
aiohttp connections for ~10 s, three times (``/_sim/reset`` between runs).
Progress goes to stderr; the last stdout line is one JSON object:

    {"sim_sends_per_s": <median accepted/s>, "webhooks_per_s": <statuses/s>,
     "webhook_posts_per_s": ..., "runs": [...], ...}

Usage: .venv/bin/python bench/bench_sim.py [--seconds 10] [--runs 3] [--concurrency 64]
                                           [--generators 1]

On a 2-core machine the aiohttp load generator saturates its core before the
simulator does: ``sim_cpu_util`` (simulator CPU seconds per second) shows the
headroom left.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from pgwa.local.stack import free_port

ROOT = Path(__file__).resolve().parents[1]
NUMBERS = 10            # 10 numbers at Meta's 1,000 mps ceiling: 10,000/s of headroom
VERSION = "v21.0"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


# --- the receiver (runs as `bench_sim.py --receiver PORT`) ----------------------------

async def receiver(port: int) -> None:
    async def hook(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


# --- the load generator ------------------------------------------------------------------

def bodies(n: int = 2000) -> list[bytes]:
    out = []
    for i in range(n):
        out.append(json.dumps({
            "messaging_product": "whatsapp", "recipient_type": "individual",
            "to": f"1555{i:07d}", "type": "template",
            "biz_opaque_callback_data": f"bench:{i}",
            "template": {"name": "order_update", "language": {"code": "en_US"},
                         "components": [{"type": "body", "parameters": [
                             {"type": "text", "text": "Ana"},
                             {"type": "text", "text": f"A-{i}"}]}]},
        }).encode())
    return out


async def load(url: str, seconds: float, concurrency: int) -> dict:
    payloads = bodies()
    targets = [(f"{url}/{VERSION}/1000000000{k:05d}/messages",
                {"Authorization": f"Bearer bench-token-{k}", "Content-Type": "application/json"})
               for k in range(NUMBERS)]
    counts = {"ok": 0, "rejected": 0, "errors": 0}
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.monotonic() + seconds

        async def worker(w: int) -> None:
            i = w
            while time.monotonic() < deadline:
                target, headers = targets[i % NUMBERS]
                try:
                    async with session.post(target, data=payloads[i % len(payloads)],
                                            headers=headers) as resp:
                        await resp.read()
                        counts["ok" if resp.status == 200 else "rejected"] += 1
                except aiohttp.ClientError:
                    counts["errors"] += 1
                i += concurrency

        t0 = time.monotonic()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        counts["elapsed"] = time.monotonic() - t0
    return counts


async def generate(url: str, args) -> dict:
    """Run the load generator(s) as separate processes; sum their counts."""
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--generate", url, "--seconds", str(args.seconds),
        "--concurrency", str(args.concurrency // args.generators),
        stdout=asyncio.subprocess.PIPE) for _ in range(args.generators)]
    outs = [json.loads((await p.communicate())[0]) for p in procs]
    return {"ok": sum(o["ok"] for o in outs), "errors": sum(o["errors"] for o in outs),
            "elapsed": max(o["elapsed"] for o in outs)}


# --- orchestration ------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def get_json(session: aiohttp.ClientSession, url: str) -> dict:
    async with session.get(url) as resp:
        return await resp.json()


async def main_async(args, sim_url: str, sim_pid: int) -> dict:
    runs = []
    async with aiohttp.ClientSession() as control:
        for n in range(args.runs):
            async with control.post(f"{sim_url}/_sim/reset", json={"settings": False}) as r:
                assert r.status == 200
            cpu0 = cpu_seconds(sim_pid)
            result = await generate(sim_url, args)
            cpu1 = cpu_seconds(sim_pid)
            await asyncio.sleep(0.5)          # let the last statuses go out
            stats = await get_json(control, f"{sim_url}/_sim/stats")
            hooks = stats["webhooks"]
            elapsed = result["elapsed"]
            run = {
                "accepted_per_s": round(stats["accepted"] / elapsed, 1),
                "requests_per_s": round(stats["requests"] / elapsed, 1),
                "rejected": stats["rejected"],
                "client_errors": result["errors"],
                "statuses_per_s": round(hooks["statuses_delivered"] / elapsed, 1),
                "webhook_posts_per_s": round(hooks["posts_ok"] / elapsed, 1),
                "webhook_failed_posts": hooks["posts_failed"],
                "sim_cpu_util": round((cpu1 - cpu0) / elapsed, 2),
                "seconds": round(elapsed, 2),
            }
            runs.append(run)
            log(f"run {n + 1}/{args.runs}: {run['accepted_per_s']:.0f} accepted/s, "
                f"{run['statuses_per_s']:.0f} statuses/s in {run['webhook_posts_per_s']:.0f} "
                f"webhook posts/s, sim cpu {run['sim_cpu_util']:.0%}")
    return {
        "sim_sends_per_s": statistics.median(r["accepted_per_s"] for r in runs),
        "webhooks_per_s": statistics.median(r["statuses_per_s"] for r in runs),
        "webhook_posts_per_s": statistics.median(r["webhook_posts_per_s"] for r in runs),
        "sim_cpu_util": statistics.median(r["sim_cpu_util"] for r in runs),
        "concurrency": args.concurrency,
        "generators": args.generators,
        "numbers": NUMBERS,
        "seconds_per_run": args.seconds,
        "runs": runs,
    }


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    async def probe() -> bool:
        try:
            async with aiohttp.ClientSession() as s, s.get(url) as r:
                return r.status < 500
        except aiohttp.ClientError:
            return False

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        if asyncio.run(probe()):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--generators", type=int, default=1,
                        help="load generator processes (default 1)")
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--generate", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        with asyncio.Runner(loop_factory=new_loop) as runner:
            print(json.dumps(runner.run(load(args.generate, args.seconds, args.concurrency))))
        return 0
    if args.receiver:
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(receiver(args.receiver))
        return 0

    hook_port, sim_port = free_port(), free_port()
    config = {
        "numbers": [{"phone_number_id": f"1000000000{k:05d}", "waba_id": "2000000000001",
                     "display_phone_number": f"1555000{k:04d}", "token": f"bench-token-{k}",
                     "throughput_mps": 1000} for k in range(NUMBERS)],
        "settings": {"statuses": {"delivered_rate": 1.0, "read_rate": 0.5,
                                  "sent_delay_ms": [10, 60], "delivered_delay_ms": [20, 100],
                                  "read_delay_ms": [50, 200]},
                     "webhook": {"batch_max": 100, "flush_ms": 50}},
    }
    procs: list[subprocess.Popen] = []
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(config, f)
    try:
        procs.append(subprocess.Popen([sys.executable, __file__, "--receiver", str(hook_port)]))
        wait_http(f"http://127.0.0.1:{hook_port}/", procs[0])
        sim = subprocess.Popen(
            [sys.executable, "-m", "sim", "--port", str(sim_port), "--config", f.name,
             "--webhook-url", f"http://127.0.0.1:{hook_port}/hook"],
            cwd=ROOT, stderr=subprocess.DEVNULL)
        procs.append(sim)
        sim_url = f"http://127.0.0.1:{sim_port}"
        wait_http(f"{sim_url}/_sim/health", sim)
        log(f"sim pid {sim.pid} on {sim_url}; {args.runs} runs of {args.seconds:g}s, "
            f"{args.concurrency} connections from {args.generators} generator process(es), "
            f"{NUMBERS} numbers at 1000 mps")
        with asyncio.Runner(loop_factory=new_loop) as runner:
            result = runner.run(main_async(args, sim_url, sim.pid))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        os.unlink(f.name)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
