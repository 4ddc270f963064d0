"""Account-level webhooks in Meta's current vocabulary, through api.ingest_webhooks and
api.process_webhooks: phone_number_quality_update, business_capability_update,
account_update, template_category_update and user_preferences. Each is applied, alerted
once (a redelivered webhook raises nothing twice), ignored when older than what a row
holds, and never moves another tenant's numbers, portfolios, templates or contacts.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.test_webhooks_payloads import (
    DISPLAY_PHONE,
    PHONE_NUMBER_ID,
    WABA_ID,
    World,
    build_world,
    envelope,
)

T0 = 1_767_000_000          # entry[].time of the first event; later events add seconds
CUSTOMER = "16505551234"

B_NUMBER, B_WABA, B_DISPLAY = "106540352249999", "102290129349999", "15550009999"


# --- payloads, shaped as Meta's webhook references show them ------------------------------

def quality_update(event: str, *, at: int, limit: str | None = None, old_limit: str | None = None,
                   display: str = DISPLAY_PHONE, waba_id: str = WABA_ID, **extra: object) -> dict:
    """phone_number_quality_update: the tier in max_daily_conversations_per_business and
    (until February 2026) current_limit; old_limit only for messaging-limit changes."""
    value: dict = {"display_phone_number": display, "event": event}
    if old_limit is not None:
        value["old_limit"] = old_limit
    if limit is not None:
        value["current_limit"] = limit
        value["max_daily_conversations_per_business"] = limit
    value.update(extra)
    return envelope("phone_number_quality_update", value, waba_id=waba_id, entry_time=at)


def capability_update(per_business: int, *, at: int, waba_id: str = WABA_ID, numbers_per_business: int = 2,
                      numbers_per_waba: int = 2) -> dict:
    """business_capability_update: limits as integers, -1 for unlimited."""
    return envelope("business_capability_update",
                    {"max_daily_conversation_per_phone": per_business,
                     "max_daily_conversations_per_business": per_business,
                     "max_phone_numbers_per_business": numbers_per_business,
                     "max_phone_numbers_per_waba": numbers_per_waba},
                    waba_id=waba_id, entry_time=at)


def account_update(event: str, *, at: int, waba_id: str = WABA_ID, **extra: object) -> dict:
    return envelope("account_update", {"event": event, **extra}, waba_id=waba_id, entry_time=at)


def ban(state: str, *, at: int, waba_id: str = WABA_ID) -> dict:
    return account_update("DISABLED_UPDATE", at=at, waba_id=waba_id,
                          ban_info={"waba_ban_state": state, "waba_ban_date": "January 2, 2026"})


def category_update(*, at: int, template_id: int = 594425479261596, name: str = "spring_sale",
                    language: str = "en_US", waba_id: str = WABA_ID, **categories: object) -> dict:
    """template_category_update: impending (correct_category, new_category = the current
    one, category_update_timestamp) or completed (previous_category, new_category)."""
    return envelope("template_category_update",
                    {"message_template_id": template_id, "message_template_name": name,
                     "message_template_language": language, **categories},
                    waba_id=waba_id, entry_time=at)


def preference(value: str, ts: int, wa_id: str = CUSTOMER, category: str = "marketing_messages") -> dict:
    return {"wa_id": wa_id, "detail": f"User requested to {value} marketing messages",
            "category": category, "value": value, "timestamp": ts}


def preferences(*items: dict, phone_number_id: str = PHONE_NUMBER_ID, display: str = DISPLAY_PHONE,
                waba_id: str = WABA_ID) -> dict:
    """user_preferences: metadata names the number; Meta's example carries no entry time."""
    return envelope("user_preferences",
                    {"messaging_product": "whatsapp",
                     "metadata": {"display_phone_number": display, "phone_number_id": phone_number_id},
                     "contacts": [{"profile": {"name": "Kerry Fisher"}, "wa_id": i["wa_id"]} for i in items],
                     "user_preferences": list(items)},
                    waba_id=waba_id)


# --- fixtures and helpers ------------------------------------------------------------------

@pytest.fixture
def world(db: psycopg.Connection) -> World:
    return build_world(db)


def deliver(world: World, *payloads: dict) -> None:
    assert world.deliver(*payloads)["dead"] == 0


def deliver_signed(world: World, payload: dict, app_secret: str) -> None:
    """As the receiver stores a payload that a number's own app signed."""
    signer = world.one("SELECT core.app_signer(%s)", app_secret)[0]
    world.db.execute("SELECT api.ingest_webhooks(%s::jsonb[], %s::text[])", ([Jsonb(payload)], [signer]))
    deliver(world)


def notes(world: World, tenant_id: int | None = None) -> list[tuple]:
    return world.db.execute(
        "SELECT kind, severity, message FROM core.notifications WHERE tenant_id = %s AND kind <> 'app_secret_changed' "
        "ORDER BY notification_id", (tenant_id or world.tenant_id,)).fetchall()


def number(world: World, number_id: int | None = None) -> dict:
    cur = world.db.execute("SELECT throughput_mps, rate_mps, quality_rating, paused_reason, portfolio_id "
                           "FROM core.wa_numbers WHERE number_id = %s", (number_id or world.number_id,))
    return dict(zip([c.name for c in cur.description], cur.fetchone()))


def portfolio(world: World, number_id: int | None = None) -> tuple:
    return world.one("SELECT p.tier, p.messaging_limit FROM core.portfolios p JOIN core.wa_numbers n "
                     "ON n.portfolio_id = p.portfolio_id WHERE n.number_id = %s", number_id or world.number_id)


def set_tier(world: World, tier: str, number_id: int | None = None) -> None:
    world.db.execute("SELECT core.set_tier(portfolio_id, %s) FROM core.wa_numbers WHERE number_id = %s",
                     (tier, number_id or world.number_id))


# --- phone_number_quality_update -------------------------------------------------------------

def test_throughput_upgrade_raises_the_pace_limit_and_the_tier_at_once(world: World) -> None:
    assert number(world)["throughput_mps"] == 80 and number(world)["rate_mps"] == 80
    set_tier(world, "TIER_100K")
    upgrade = quality_update("THROUGHPUT_UPGRADE", at=T0, limit="TIER_UNLIMITED")
    deliver(world, upgrade)
    assert number(world)["throughput_mps"] == 1000
    assert portfolio(world) == ("TIER_UNLIMITED", None)
    [(kind, severity, message)] = notes(world)
    assert (kind, severity) == ("phone_quality", "info") and "1,000 messages per second" in message
    # Redelivered (Meta retries; every subscribed app gets a copy): nothing twice.
    deliver(world, upgrade, upgrade)
    assert len(notes(world)) == 1

    # The AIMD pace now grows past 80 with clean reports, up to the new limit.
    def clean_report(seconds: int) -> float:
        world.db.execute(
            "SELECT core.report_pace(ARRAY[jsonb_populate_record(NULL::core.send_outcome, "
            "jsonb_build_object('number_id', %s::bigint, 'outcome', 'accepted'))], now() + make_interval(secs => %s))",
            (world.number_id, seconds))
        return number(world)["rate_mps"]
    assert 80 < clean_report(2) < clean_report(4) <= 1000
    assert clean_report(6) == clean_report(8) == 1000


def test_quality_events_set_the_tier_and_rating_and_alert_by_severity(world: World) -> None:
    set_tier(world, "TIER_2K")
    deliver(world, quality_update("UPGRADE", at=T0, limit="TIER_10K", old_limit="TIER_2K"))
    assert portfolio(world) == ("TIER_10K", 10_000)
    deliver(world, quality_update("DOWNGRADE", at=T0 + 60, limit="TIER_2K", old_limit="TIER_10K"))
    assert portfolio(world) == ("TIER_2K", 2_000)
    deliver(world, quality_update("ONBOARDING", at=T0 + 120, limit="TIER_NOT_SET"))     # no tier, no news
    assert portfolio(world) == ("TIER_2K", 2_000)
    deliver(world, quality_update("UPGRADE", at=T0 + 180, limit="TIER_10K", quality_rating="RED"))
    assert number(world)["quality_rating"] == "RED"
    assert [(k, s) for k, s, _ in notes(world)] == [
        ("phone_quality", "info"), ("phone_quality", "warning"), ("phone_quality", "critical")]
    assert "messaging limit TIER_2K" in notes(world)[1][2]

    # A late copy of the DOWNGRADE (Meta retries for days, in no order) undoes nothing.
    deliver(world, quality_update("DOWNGRADE", at=T0 + 60, limit="TIER_2K", old_limit="TIER_10K"),
            quality_update("UPGRADE", at=T0 + 90, limit="TIER_2K", quality_rating="GREEN"))
    assert portfolio(world) == ("TIER_10K", 10_000)
    assert number(world)["quality_rating"] == "RED"
    assert len(notes(world)) == 3


def test_the_retired_vocabulary_still_sets_the_rating_but_no_tier(world: World) -> None:
    set_tier(world, "TIER_100K")
    deliver(world, quality_update("FLAGGED", at=T0, old_limit=None, current_limit="TIER_1K"))
    assert number(world)["quality_rating"] == "RED"
    assert portfolio(world) == ("TIER_100K", 100_000)       # a number's old limit is not the portfolio's
    deliver(world, quality_update("UNFLAGGED", at=T0 + 60, current_limit="TIER_1K"))
    assert number(world)["quality_rating"] == "GREEN"
    assert [(k, s) for k, s, _ in notes(world)] == [("phone_quality", "critical")]


# --- business_capability_update --------------------------------------------------------------

def test_capability_update_sets_the_portfolios_tier_and_tells_the_tenant(world: World) -> None:
    set_tier(world, "TIER_250")
    deliver(world, capability_update(2000, at=T0))
    assert portfolio(world) == ("TIER_2K", 2_000)
    [(kind, severity, message)] = notes(world)
    assert (kind, severity) == ("business_capability", "info")
    assert "2000 users per 24 hours" in message and "phone numbers per WABA 2" in message
    deliver(world, capability_update(2000, at=T0))                              # redelivered
    assert len(notes(world)) == 1
    deliver(world, capability_update(-1, at=T0 + 60))
    assert portfolio(world) == ("TIER_UNLIMITED", None)
    deliver(world, capability_update(10_000, at=T0 + 120))
    assert portfolio(world) == ("TIER_10K", 10_000)
    assert [s for _, s, _ in notes(world)] == ["info", "info", "warning"]
    deliver(world, capability_update(250, at=T0 + 30))                         # older: ignored
    assert portfolio(world) == ("TIER_10K", 10_000)
    assert len(notes(world)) == 3
    # Other capabilities alone: told, no tier touched.
    deliver(world, envelope("business_capability_update", {"max_phone_numbers_per_business": 20},
                            entry_time=T0 + 180))
    assert portfolio(world) == ("TIER_10K", 10_000)
    assert "phone numbers per business portfolio 20" in notes(world)[-1][2]


# --- account_update ------------------------------------------------------------------------

def test_a_ban_pauses_the_wabas_numbers_and_a_reinstatement_resumes_them(world: World) -> None:
    deliver(world, ban("SCHEDULE_FOR_DISABLE", at=T0))
    assert number(world)["paused_reason"] is None
    deliver(world, ban("DISABLE", at=T0 + 60))
    assert number(world)["paused_reason"].startswith("waba_disabled:")
    deliver(world, ban("DISABLE", at=T0 + 60))                                 # redelivered
    assert [(k, s) for k, s, _ in notes(world)] == [("account_update", "critical")] * 2
    assert "sending paused" in notes(world)[1][2]

    deliver(world, ban("REINSTATE", at=T0 + 120))
    assert number(world)["paused_reason"] is None
    assert notes(world)[-1][1] == "info"
    deliver(world, ban("DISABLE", at=T0 + 60))                                 # a late copy
    assert number(world)["paused_reason"] is None
    assert len(notes(world)) == 3

    # A reinstatement lifts only the pause a ban set.
    world.db.execute("UPDATE core.wa_numbers SET paused_reason = 'transferred: register again' "
                     "WHERE number_id = %s", (world.number_id,))
    deliver(world, ban("REINSTATE", at=T0 + 180))
    assert number(world)["paused_reason"] == "transferred: register again"


@pytest.mark.parametrize(("event", "extra", "severity", "text"), [
    ("ACCOUNT_VIOLATION", {"violation_info": {"violation_type": "ADULT"}}, "critical", "ADULT"),
    ("ACCOUNT_RESTRICTION", {"restriction_info": [
        {"restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING", "expiration": 1767800000},
        {"restriction_type": "RESTRICTED_ADD_PHONE_NUMBER_ACTION", "expiration": 1767800000}]},
     "critical", "RESTRICTED_BIZ_INITIATED_MESSAGING until 2026-01-07"),
    ("ACCOUNT_DELETED", {}, "critical", "ACCOUNT_DELETED"),
    ("ACCOUNT_OFFBOARDED", {}, "critical", "ACCOUNT_OFFBOARDED"),
    ("PARTNER_REMOVED", {"waba_info": {"waba_id": WABA_ID, "owner_business_id": "2329417887457253"}},
     "critical", "PARTNER_REMOVED"),
    ("PARTNER_APP_UNINSTALLED", {"waba_info": {"waba_id": WABA_ID, "partner_app_id": "869361281603019"}},
     "critical", "PARTNER_APP_UNINSTALLED"),
    ("PARTNER_CLIENT_CERTIFICATION_STATUS_UPDATE", {"partner_client_certification_info": {
        "client_business_id": "2729063490586005", "status": "REJECTED", "rejection_reasons": ["OTHER"]}},
     "warning", "PARTNER_CLIENT_CERTIFICATION_STATUS_UPDATE"),
    ("BUSINESS_PRIMARY_LOCATION_COUNTRY_UPDATE", {"country": "IN"}, "info", "IN"),
    ("PARTNER_ADDED", {"waba_info": {"waba_id": WABA_ID, "owner_business_id": "2329417887457253"}},
     "info", "PARTNER_ADDED"),
    ("VERIFIED_ACCOUNT", {}, "info", "VERIFIED_ACCOUNT"),
    ("MM_LITE_TERMS_SIGNED", {"waba_info": {"waba_id": WABA_ID}}, "info", "MM_LITE_TERMS_SIGNED"),
    ("AUTH_INTL_PRICE_ELIGIBILITY_UPDATE", {"auth_international_rate_eligibility": {
        "exception_countries": [{"country_code": "ID", "start_time": 1751347424}], "start_time": 1748780624}},
     "info", "AUTH_INTL_PRICE_ELIGIBILITY_UPDATE"),
    ("VOLUME_BASED_PRICING_TIER_UPDATE", {"volume_tier_info": {"tier": "25000001:50000000", "region": "India"}},
     "info", "VOLUME_BASED_PRICING_TIER_UPDATE"),
    ("SOMETHING_META_ADDS_LATER", {}, "info", "SOMETHING_META_ADDS_LATER"),
])
def test_account_events_alert_once_with_their_severity(world: World, event: str, extra: dict,
                                                       severity: str, text: str) -> None:
    payload = account_update(event, at=T0, **extra)
    deliver(world, payload)
    deliver(world, payload)
    [(kind, got, message)] = notes(world)
    assert (kind, got) == ("account_update", severity) and text in message and WABA_ID in message
    assert number(world)["paused_reason"] is None


# --- template_category_update ----------------------------------------------------------------

def test_a_category_change_is_announced_then_applied_and_warns_its_campaigns(world: World) -> None:
    world.db.execute("UPDATE core.templates SET category = 'UTILITY' WHERE template_id = %s", (world.template_ids[0],))
    impending = category_update(at=T0, correct_category="MARKETING", new_category="UTILITY",
                                category_update_timestamp=T0 + 86_400)
    deliver(world, impending, impending)
    assert world.one("SELECT category FROM core.templates WHERE template_id = %s", world.template_ids[0]) == \
        ("UTILITY",)
    [(kind, severity, message)] = notes(world)
    assert (kind, severity) == ("template_category", "warning")
    assert "will be recategorised from UTILITY to MARKETING" in message

    # Completed, named the way Meta's examples write languages (en-US).
    done = category_update(at=T0 + 86_400, language="en-US", previous_category="UTILITY",
                           new_category="MARKETING", template_id=1)
    deliver(world, done, done)
    assert world.one("SELECT category FROM core.templates WHERE template_id = %s", world.template_ids[0]) == \
        ("MARKETING",)
    assert [(k, s) for k, s, _ in notes(world)] == [
        ("template_category", "warning"), ("template_category", "warning"), ("campaign_template_category", "warning")]
    assert "is now MARKETING (was UTILITY)" in notes(world)[1][2]
    assert 'Campaign "Spring"' in notes(world)[2][2]
    # A finished campaign is not warned.
    world.db.execute("UPDATE core.campaigns SET status = 'completed' WHERE campaign_id = %s", (world.campaign_id,))
    deliver(world, category_update(at=T0 + 90_000, previous_category="MARKETING", new_category="UTILITY"))
    assert notes(world)[-1][0] == "template_category" and len(notes(world)) == 4


# --- user_preferences --------------------------------------------------------------------------

def marketing(world: World, wa_id: str = CUSTOMER, tenant_id: int | None = None) -> tuple | None:
    return world.one("SELECT marketing_stopped_at IS NOT NULL, marketing_resumed_at IS NOT NULL "
                     "FROM core.contacts WHERE tenant_id = %s AND wa_id = %s", tenant_id or world.tenant_id, wa_id)


def test_a_user_who_stops_marketing_is_skipped_until_they_resume(world: World) -> None:
    world.contact(CUSTOMER)
    deliver(world, preferences(preference("stop", T0)))
    assert marketing(world) == (True, False)
    assert world.one("SELECT extract(epoch FROM marketing_stopped_at)::bigint FROM core.contacts "
                     "WHERE tenant_id = %s AND wa_id = %s", world.tenant_id, CUSTOMER) == (T0,)
    deliver(world, preferences(preference("resume", T0 + 60)))
    assert marketing(world) == (False, True)
    deliver(world, preferences(preference("stop", T0)))                        # a late copy of the stop
    assert marketing(world) == (False, True)
    # Several in one webhook: the newest counts; other categories and malformed ids are ignored.
    deliver(world, preferences(preference("resume", T0 + 120), preference("stop", T0 + 180),
                               preference("stop", T0 + 200, category="something_else", wa_id="16505550001"),
                               preference("stop", T0 + 200, wa_id="+1 (650) 555")))
    assert marketing(world) == (True, True)
    assert marketing(world, "16505550001") is None
    # A user not yet a contact who stops is kept, so that a later campaign skips them too.
    deliver(world, preferences(preference("stop", T0, wa_id="16505550002")))
    assert marketing(world, "16505550002") == (True, False)
    assert notes(world) == []


# --- trust -------------------------------------------------------------------------------------

def test_changes_through_one_tenants_waba_never_move_another_tenants_rows(world: World) -> None:
    db = world.db
    b = db.execute("SELECT api.create_tenant('Other')").fetchone()[0]
    b_number = db.execute("SELECT api.register_number(%s, %s, %s, 'token-b', 'b-app', 80, %s)",
                          (b, B_NUMBER, B_WABA, B_DISPLAY)).fetchone()[0]
    db.execute("SELECT api.upsert_template(%s, %s, 'spring_sale', 'en_US', '[]', 'APPROVED', 'UTILITY', "
               "'594425479261596')", (b, B_WABA))
    db.execute("INSERT INTO core.contacts (tenant_id, wa_id) VALUES (%s, %s)", (b, CUSTOMER))
    set_tier(world, "TIER_250", b_number)
    snapshot = """
        SELECT (SELECT row_to_json(n)::text FROM core.wa_numbers n WHERE n.tenant_id = %(b)s),
               (SELECT json_agg(p)::text FROM core.portfolios p WHERE p.tenant_id = %(b)s),
               (SELECT json_agg(t)::text FROM core.templates t WHERE t.tenant_id = %(b)s),
               (SELECT json_agg(c ORDER BY c.contact_id)::text FROM core.contacts c WHERE c.tenant_id = %(b)s),
               (SELECT count(*) FROM core.notifications WHERE tenant_id = %(b)s AND kind <> 'app_secret_changed')"""
    before = db.execute(snapshot, {"b": b}).fetchone()

    # Through A's WABA, naming B's number, template and user.
    deliver(world,
            quality_update("THROUGHPUT_UPGRADE", at=T0, limit="TIER_UNLIMITED", display=B_DISPLAY),
            capability_update(-1, at=T0),
            ban("DISABLE", at=T0),
            category_update(at=T0, previous_category="UTILITY", new_category="MARKETING"),
            preferences(preference("stop", T0), phone_number_id=B_NUMBER, display=B_DISPLAY))
    # A's own rows moved (the same changes are A's to make)...
    assert portfolio(world) == ("TIER_UNLIMITED", None)
    assert number(world)["paused_reason"] is not None
    assert world.one("SELECT category FROM core.templates WHERE template_id = %s", world.template_ids[0]) == \
        ("MARKETING",)
    assert number(world)["throughput_mps"] == 80            # B's display number is not A's number
    assert marketing(world) is None                         # B's number names no contact of A's
    # ...B's did not.
    assert db.execute(snapshot, {"b": b}).fetchone() == before

    # Signed by A's own app, naming B's WABA: dropped whole (core.authorised_changes).
    deliver_signed(world, capability_update(250, at=T0 + 60, waba_id=B_WABA), "app-secret")
    deliver_signed(world, preferences(preference("stop", T0 + 60), phone_number_id=B_NUMBER, display=B_DISPLAY,
                                      waba_id=B_WABA), "app-secret")
    assert db.execute(snapshot, {"b": b}).fetchone() == before
    assert number(world, b_number)["paused_reason"] is None


def test_a_numbers_own_app_speaks_only_for_the_numbers_it_holds(world: World) -> None:
    """Two apps' numbers in one WABA: a quality update the second app signs, naming the
    first app's number, moves nothing of it; naming its own number, it applies."""
    second = world.db.execute(
        "SELECT api.register_number(%s, '106540352242923', %s, 'token', 'second-app', 80, '15550783882')",
        (world.tenant_id, WABA_ID)).fetchone()[0]
    deliver_signed(world, quality_update("THROUGHPUT_UPGRADE", at=T0, quality_rating="RED"), "second-app")
    assert (number(world)["throughput_mps"], number(world)["quality_rating"]) == (80, None)
    assert notes(world) == []
    deliver_signed(world, quality_update("THROUGHPUT_UPGRADE", at=T0, display="15550783882"), "second-app")
    assert number(world, second)["throughput_mps"] == 1000
    assert number(world)["throughput_mps"] == 80
