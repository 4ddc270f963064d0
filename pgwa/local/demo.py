"""`make demo`: two campaigns end to end on this machine: a two-template one to 20,000
contacts, then a media one (image header, named parameters, URL button) to 5,000.

Starts the simulator (standing in for Meta), the webhook receiver and a worker;
creates a demo tenant, a number at Meta's top throughput tier (1,000 msg/s) and syncs
its templates from the simulator; uploads 20,000 generated contacts with COPY; runs
each campaign with a live progress bar; prints each funnel and what the simulator's
ledger saw (duplicates, peak rate); ends with one JSON line
``{"campaigns": [{"name", "components", "sent", "failed", "duplicates", ...}, ...], "dashboard": {...}}``
(before it, the dashboard's URL and the login of an admin made for the demo's tenant),
stops everything and exits 0 when both completed with nothing failed or sent twice.
"""

from __future__ import annotations

import os
import random
import secrets
import sys
import time

import orjson
import psycopg
from psycopg.rows import dict_row
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from api.dashboard.passwords import hash_password
from api.graph_templates import sync_templates
from pgwa.cli.users import CREATE_USER
from pgwa.config import Settings, database_url
from pgwa.contacts import csv_text, stage_csv
from pgwa.local.stack import GRAPH_VERSION, Stack
from pgwa.queries import queries

CONTACTS = 20_000
THROUGHPUT = 1000
TEMPLATES = [
    {"name": "order_update", "language": "en_US", "params": [{"column": "name"}, {"column": "order_no"}]},
    {"name": "promo_offer", "language": "en_US", "params": [{"value": "20% off this week"}]},
]
# The second campaign: a marketing template with an image header (a link), named body
# parameters (a column and two constants) and a shop button whose URL ends with a
# per-customer path; its quick reply needs no parameter.
MEDIA_CONTACTS = 5_000
MEDIA_TEMPLATE = {
    "name": "spring_sale", "language": "en_US",
    "header": {"value": "https://cdn.example.com/pgwa-demo/spring.jpg"},
    "body": {"first_name": {"column": "first_name"}, "discount": {"value": "20%"},
             "end_date": {"value": "Sunday"}},
    "buttons": {"0": {"column": "sale_path"}},
}
# The simulator behaves as Meta (sim/config.py) but for two rules the demo's list would
# meet: its contacts are fictional +1 555 numbers and promo_offer is a marketing template,
# which Meta does not deliver to US numbers (and caps per user for a share of them). The
# demo shows every message delivered at the number's top rate, so those two are off.
SIM_SETTINGS = {"us_marketing_blocked": False, "marketing_cap_share": 0.0}


def contacts(n: int, seed: int = 7) -> list[dict[str, str]]:
    rng = random.Random(seed)
    first = ["Ana", "Ben", "Chloé", "Dev", "Eun", "Femi", "Gus", "Hana", "Ivo", "Jun"]
    return [{"phone": f"+1 555 {i:07d}", "name": rng.choice(first), "order_no": f"A-{100000 + i}"}
            for i in range(n)]


def media_contacts(n: int, seed: int = 11) -> list[dict[str, str]]:
    """The second list: first names and a per-customer path for the shop link."""
    rng = random.Random(seed)
    first = ["Ana", "Ben", "Chloé", "Dev", "Eun", "Femi", "Gus", "Hana", "Ivo", "Jun"]
    return [{"phone": f"+1 556 {i:07d}", "first_name": rng.choice(first), "sale_path": f"spring?c={i:05d}"}
            for i in range(n)]


def send_campaign(console: Console, conn: psycopg.Connection, stack: Stack, tenant: int, number: int,
                  name: str, templates: list[dict], rows: list[dict]) -> dict:
    """Create a running campaign from ``rows``, show its progress until it completes (and
    its delivery webhooks are in), print its funnel; returns its summary."""
    cur = conn.cursor(row_factory=dict_row)
    started = time.monotonic()
    with conn.transaction():
        stage_csv(conn, csv_text(rows))
        created = cur.execute(queries["create_campaign"], {
            "tenant_id": tenant, "number_id": number, "name": name,
            "templates": orjson.dumps(templates).decode(), "on_invalid": "reject", "scheduled_at": None,
            "start": True, "default_country_code": None}).fetchone()
    campaign, total = created["campaign_id"], created["total"]
    console.print(f"campaign {campaign} ({name}): {total} messages queued in {time.monotonic() - started:.2f} s")
    sending_from = time.monotonic()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("sending", total=total, detail="")
        status, sent_at = "running", None
        while True:
            s = cur.execute(queries["campaign_stats"], {"tenant_id": tenant, "campaign_id": campaign}).fetchone()
            status, sent, delivered, read, failed, replied = (
                s["status"], s["sent"], s["delivered"], s["read"], s["failed"], s["replied"])
            elapsed = time.monotonic() - sending_from
            if status == "completed" and sent_at is None:
                sent_at = elapsed
            rate = sent / (sent_at or elapsed) if elapsed else 0
            bar.update(task, completed=sent + failed, detail=(
                f"delivered {delivered}  read {read}  failed {failed}  replied {replied}  {rate:,.0f} msg/s"))
            # Once every message is sent, wait a little for the last delivery webhooks.
            settled = delivered + failed >= total or (sent_at and elapsed - sent_at > 15)
            if status in ("completed", "cancelled", "paused") and settled or elapsed > 600:
                break
            time.sleep(0.25)
    ledger = stack.sim("GET", "/_sim/stats")
    # The simulator counts a duplicate per campaign tag (biz_opaque_callback_data up to ':').
    duplicates = ledger.get("duplicates_by_tag", {}).get(f"c{campaign}", 0)

    table = Table(title=f"Campaign {campaign}: {name} ({status})", show_lines=False)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for label, value in [("queued", total), ("sent (accepted by Meta)", sent), ("delivered", delivered),
                         ("read", read), ("replied", replied), ("failed", failed),
                         ("send time", f"{sent_at or 0:.1f} s"),
                         ("throughput", f"{total / (sent_at or 1):,.0f} msg/s"),
                         ("number's limit", f"{THROUGHPUT} msg/s"),
                         ("duplicate sends (simulator)", duplicates)]:
        table.add_row(label, f"{value:,}" if isinstance(value, int) else str(value))
    console.print(table)
    components = sorted({c for t in templates for c in ("header", "body", "buttons") if t.get(c)}
                        | ({"body"} if any("params" in t for t in templates) else set()))
    return {"campaign_id": campaign, "name": name, "templates": [t["name"] for t in templates],
            "components": components, "status": status, "total": total, "sent": sent, "delivered": delivered,
            "failed": failed, "duplicates": duplicates, "send_s": round(sent_at or 0, 1)}


def run(console: Console) -> int:
    url = database_url()
    stamp = int(time.time())
    with psycopg.connect(url, autocommit=True) as conn, Stack(url, sim_settings=SIM_SETTINGS) as stack:
        console.print(f"[bold]pgwa demo[/]: simulator {stack.sim_url}, webhooks {stack.api_url}, logs {stack.logs}")
        tenant = conn.execute(queries["create_tenant"], {"name": f"demo-{stamp}"}).fetchone()[0]
        # A dashboard admin of the demo's tenant, as `pgwa user add` makes one (argon2 here,
        # only the hash reaches SQL); its generated password is printed once, at the end.
        email, password = f"admin+{stamp}@demo.example", secrets.token_urlsafe(12)
        conn.execute(CREATE_USER, {"tenant_id": tenant, "email": email, "role": "admin",
                                   "password_hash": hash_password(password)})
        phone_number_id, waba_id = f"1{stamp:014d}", f"2{stamp:014d}"
        number = stack.register_number(conn, tenant, phone_number_id, waba_id, THROUGHPUT)
        synced = sync_templates(conn, tenant, waba_id, "local-token", stack.sim_url, GRAPH_VERSION)
        console.print(f"number {phone_number_id} at {THROUGHPUT} msg/s; {synced} templates synced")
        stack.start_workers()
        summaries = [
            send_campaign(console, conn, stack, tenant, number, "Demo: order update + promo", TEMPLATES,
                          contacts(CONTACTS)),
            send_campaign(console, conn, stack, tenant, number, "Demo: spring sale (image, named, URL button)",
                          [MEDIA_TEMPLATE], media_contacts(MEDIA_CONTACTS)),
        ]
        peak = stack.sim("GET", "/_sim/stats")["numbers"].get(phone_number_id, {}).get("peak_1s_attempts")
    console.print(f"peak 1-second rate at the simulator: {peak} (limit {THROUGHPUT} msg/s)")
    dashboard = f"http://127.0.0.1:{os.environ.get('PGWA_API_PORT') or Settings.api_port}/dashboard"
    console.print(f"[bold]Dashboard[/]: run `make api` (and `make worker` to send), open {dashboard}/login and log in "
                  f"as {email} with the password {password} (shown once; tenant {tenant})", highlight=False)
    print(orjson.dumps({"campaigns": [
        {k: s[k] for k in ("name", "components", "status", "total", "sent", "delivered", "failed", "duplicates")}
        for s in summaries], "peak_1s_rate": peak,
        "dashboard": {"url": dashboard, "email": email, "tenant_id": tenant}}).decode())
    ok = all(s["status"] == "completed" and s["failed"] == 0 and s["duplicates"] == 0 for s in summaries)
    return 0 if ok else 1


def main() -> int:
    return run(Console(stderr=False))


if __name__ == "__main__":
    sys.exit(main())
