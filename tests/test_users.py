"""Dashboard users in SQL (db/functions/users.sql): accounts, invitations, sessions, the
lockout, role checks and tenant isolation, with time passed as p_now."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from api.dashboard.passwords import hash_password, verify
from api.dashboard.sessions import new_token, token_hash
from tests import factories

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
HASH = hash_password("correct horse battery")


def sqlstate(db: psycopg.Connection, query: str, params: tuple | dict) -> str | None:
    try:
        db.execute(query, params)
    except psycopg.Error as exc:
        return exc.sqlstate
    return None


def user(db: psycopg.Connection, tenant_id: int, email: str, role: str) -> int:
    return db.execute("SELECT user_id FROM api.create_user(%s, %s, %s, %s, %s)",
                      (tenant_id, email, role, HASH, T0)).fetchone()[0]


def login(db: psycopg.Connection, user_id: int, now: datetime = T0) -> bytes:
    """A new session of the user; returns its token hash."""
    h = token_hash(new_token())
    db.execute("SELECT api.dashboard_login(%s, %s, %s)", (user_id, h, now))
    return h


def authorize(db: psycopg.Connection, h: bytes, action: str, now: datetime = T0) -> int:
    return db.execute("SELECT api.dashboard_authorize(%s, %s, %s)", (h, action, now)).fetchone()[0]


@pytest.fixture
def acc(db: psycopg.Connection) -> factories.Account:
    return factories.account(db)


def test_a_user_is_created_with_a_lower_cased_email_unique_per_tenant(db, acc) -> None:
    uid = user(db, acc.tenant_id, "  Ana@Example.COM ", "admin")
    rows = db.execute("SELECT user_id, email, role FROM api.dashboard_users(%s)", (acc.tenant_id,)).fetchall()
    assert rows == [(uid, "ana@example.com", "admin")]
    assert sqlstate(db, "SELECT api.create_user(%s, 'ana@example.com', 'agent', %s)", (acc.tenant_id, HASH)) == "PW302"
    other = factories.account(db)
    assert user(db, other.tenant_id, "ana@example.com", "agent") != uid     # another tenant may
    assert sqlstate(db, "SELECT api.create_user(%s, 'ana', 'agent', %s)", (acc.tenant_id, HASH)) == "PW100"
    assert sqlstate(db, "SELECT api.create_user(%s, 'b@x.io', 'boss', %s)", (acc.tenant_id, HASH)) == "PW100"
    assert sqlstate(db, "SELECT api.create_user(%s, 'b@x.io', 'agent', 'plain')", (acc.tenant_id,)) == "PW100"
    assert sqlstate(db, "SELECT api.create_user(999999, 'b@x.io', 'agent', %s)", (HASH,)) == "PW205"


def test_login_returns_the_hash_to_verify_and_a_session_holds_its_roles_actions(db, acc) -> None:
    uid = user(db, acc.tenant_id, "ana@example.com", "marketer")
    rows = db.execute("SELECT user_id, tenant_id, password_hash FROM api.dashboard_login_users('ANA@example.com', NULL, %s)",
                      (T0,)).fetchall()
    assert [(r[0], r[1]) for r in rows] == [(uid, acc.tenant_id)] and verify(rows[0][2], "correct horse battery")
    assert not verify(rows[0][2], "wrong password!")
    assert db.execute("SELECT count(*) FROM api.dashboard_login_users('nobody@example.com', NULL, %s)",
                      (T0,)).fetchone()[0] == 0
    h = login(db, uid)
    s = db.execute("SELECT tenant_id, user_id, email, role, actions FROM api.dashboard_session(%s, %s)",
                   (h, T0)).fetchone()
    assert s == (acc.tenant_id, uid, "ana@example.com", "marketer",
                 ["bots.manage", "bots.read", "campaigns.manage", "campaigns.read", "contacts.manage",
                  "contacts.read", "inbox.read", "notifications.manage", "notifications.read",
                  "numbers.read", "templates.read"])


def test_the_listing_never_shows_a_password_hash(db, acc) -> None:
    user(db, acc.tenant_id, "ana@example.com", "admin")
    listed = db.execute("SELECT row_to_json(u)::text FROM api.dashboard_users(%s) u", (acc.tenant_id,)).fetchone()[0]
    assert "argon2" not in listed and "password" not in listed


def test_a_session_expires_and_logout_revokes_it(db, acc) -> None:
    uid = user(db, acc.tenant_id, "ana@example.com", "viewer")
    h = login(db, uid)
    assert authorize(db, h, "campaigns.read", T0 + timedelta(hours=11)) == acc.tenant_id
    assert sqlstate(db, "SELECT api.dashboard_authorize(%s, 'campaigns.read', %s)",
                    (h, T0 + timedelta(hours=12))) == "PW401"
    h2 = login(db, uid)
    assert db.execute("SELECT api.dashboard_logout(%s, %s)", (h2, T0)).fetchone()[0] is True
    assert db.execute("SELECT api.dashboard_logout(%s, %s)", (h2, T0)).fetchone()[0] is False
    assert sqlstate(db, "SELECT api.dashboard_session(%s, %s)", (h2, T0)) == "PW401"
    assert sqlstate(db, "SELECT api.dashboard_authorize(%s, 'campaigns.read', %s)", (b"x" * 32, T0)) == "PW401"


def test_disabling_a_user_ends_their_sessions_but_never_the_last_admin(db, acc) -> None:
    admin = user(db, acc.tenant_id, "boss@example.com", "admin")
    agent = user(db, acc.tenant_id, "ana@example.com", "agent")
    h = login(db, agent)
    db.execute("SELECT api.disable_user(%s, %s, %s)", (acc.tenant_id, agent, T0))
    assert sqlstate(db, "SELECT api.dashboard_session(%s, %s)", (h, T0)) == "PW401"
    assert sqlstate(db, "SELECT api.dashboard_login(%s, %s, %s)", (agent, token_hash(new_token()), T0)) == "PW401"
    assert sqlstate(db, "SELECT api.disable_user(%s, %s)", (acc.tenant_id, admin)) == "PW301"
    assert sqlstate(db, "SELECT api.set_user_role(%s, %s, 'viewer')", (acc.tenant_id, admin)) == "PW301"


def test_failed_logins_lock_the_user_out_for_a_while_within_the_window(db, acc) -> None:
    uid = user(db, acc.tenant_id, "ana@example.com", "agent")
    fail = "SELECT api.dashboard_login_failed('ana@example.com', NULL, %s)"
    # Failures spread wider than the window never add up.
    for i in range(6):
        assert db.execute(fail, (T0 + timedelta(minutes=16 * i),)).fetchone()[0] is False
    t = T0 + timedelta(hours=3)
    results = [db.execute(fail, (t + timedelta(seconds=i),)).fetchone()[0] for i in range(5)]
    assert results == [False, False, False, False, True]
    assert sqlstate(db, "SELECT * FROM api.dashboard_login_users('ana@example.com', NULL, %s)",
                    (t + timedelta(minutes=1),)) == "PW460"
    assert sqlstate(db, "SELECT api.dashboard_login(%s, %s, %s)",
                    (uid, token_hash(new_token()), t + timedelta(minutes=1))) == "PW401"
    later = t + timedelta(minutes=16)
    assert db.execute("SELECT count(*) FROM api.dashboard_login_users('ana@example.com', NULL, %s)",
                      (later,)).fetchone()[0] == 1
    login(db, uid, later)   # a good login clears the count
    assert db.execute("SELECT failed_logins, locked_until FROM core.dashboard_users WHERE user_id = %s",
                      (uid,)).fetchone() == (0, None)


def test_an_invitation_is_accepted_once_and_expires(db, acc) -> None:
    token = token_hash(new_token())
    inv = db.execute("SELECT email, role, expires_at FROM api.invite_user(%s, 'New@Example.com', 'agent', %s, %s)",
                     (acc.tenant_id, token, T0)).fetchone()
    assert inv == ("new@example.com", "agent", T0 + timedelta(days=7))
    assert db.execute("SELECT email FROM api.invitation(%s, %s)", (token, T0)).fetchone()[0] == "new@example.com"
    uid, role = db.execute("SELECT user_id, role FROM api.accept_invitation(%s, %s, %s)",
                           (token, HASH, T0 + timedelta(hours=1))).fetchone()
    assert role == "agent" and uid > 0
    assert sqlstate(db, "SELECT api.accept_invitation(%s, %s, %s)", (token, HASH, T0 + timedelta(hours=2))) == "PW260"
    late = token_hash(new_token())
    db.execute("SELECT api.invite_user(%s, 'late@example.com', 'viewer', %s, %s)", (acc.tenant_id, late, T0))
    assert sqlstate(db, "SELECT api.accept_invitation(%s, %s, %s)", (late, HASH, T0 + timedelta(days=7))) == "PW260"
    assert sqlstate(db, "SELECT api.invite_user(%s, 'new@example.com', 'agent', %s, %s)",
                    (acc.tenant_id, token_hash(new_token()), T0)) == "PW302"
    assert sqlstate(db, "SELECT api.invite_user(%s, 'x@example.com', 'agent', %s, %s)",
                    (acc.tenant_id, b"short", T0)) == "PW100"


@pytest.mark.parametrize(("role", "allowed"), [
    ("admin", {"campaigns.read", "campaigns.manage", "inbox.read", "inbox.reply", "inbox.assign", "users.manage"}),
    ("marketer", {"campaigns.read", "campaigns.manage", "inbox.read"}),
    ("agent", {"inbox.read", "inbox.reply"}),
    ("viewer", {"campaigns.read", "inbox.read"}),
])
def test_each_role_holds_its_actions_and_is_refused_the_others(db, acc, role: str, allowed: set[str]) -> None:
    h = login(db, user(db, acc.tenant_id, f"{role}@example.com", role))
    every = {"campaigns.read", "campaigns.manage", "inbox.read", "inbox.reply", "inbox.assign", "users.manage"}
    for action in every:
        code = sqlstate(db, "SELECT api.dashboard_authorize(%s, %s, %s)", (h, action, T0))
        assert code == (None if action in allowed else "PW403"), action


def test_an_agent_may_not_pause_a_campaign_through_sql(db, acc) -> None:
    cid = factories.running_campaign(db, acc, 2)
    h = login(db, user(db, acc.tenant_id, "ana@example.com", "agent"))
    assert sqlstate(db, "SELECT api.pause_campaign(api.dashboard_authorize(%s, 'campaigns.manage', %s), %s)",
                    (h, T0, cid)) == "PW403"
    assert factories.campaign(db, cid)["status"] == "running"
    m = login(db, user(db, acc.tenant_id, "mark@example.com", "marketer"))
    assert db.execute("SELECT api.pause_campaign(api.dashboard_authorize(%s, 'campaigns.manage', %s), %s)",
                      (m, T0, cid)).fetchone()[0] == "paused"


def test_a_session_of_tenant_a_never_reaches_tenant_b(db, acc) -> None:
    other = factories.account(db)
    their_campaign = factories.running_campaign(db, other, 2)
    h = login(db, user(db, acc.tenant_id, "boss@example.com", "admin"))
    assert sqlstate(db, "SELECT api.campaign_stats(api.dashboard_authorize(%s, 'campaigns.read', %s), %s)",
                    (h, T0, their_campaign)) == "PW201"
    assert sqlstate(db, "SELECT api.pause_campaign(api.dashboard_authorize(%s, 'campaigns.manage', %s), %s)",
                    (h, T0, their_campaign)) == "PW201"
    assert sqlstate(db, "SELECT c.* FROM api.dashboard_actor(%s, 'inbox.read', NULL, NULL, %s) a, "
                        "api.inbox_conversations(a.tenant_id, a.user_id, %s, 'all', NULL, 50, %s) c",
                    (h, T0, other.number_id, T0)) == "PW202"
    theirs = user(db, other.tenant_id, "eve@example.com", "agent")
    assert sqlstate(db, "SELECT api.disable_user(%s, %s)", (acc.tenant_id, theirs)) == "PW260"
    assert sqlstate(db, "SELECT api.set_user_role(%s, %s, 'admin')", (acc.tenant_id, theirs)) == "PW260"
    assert db.execute("SELECT count(*) FROM api.dashboard_users(%s)", (acc.tenant_id,)).fetchone()[0] == 1
    # The same e-mail in two tenants: the tenant given at login picks one.
    user(db, other.tenant_id, "boss@example.com", "viewer")
    both = db.execute("SELECT tenant_id FROM api.dashboard_login_users('boss@example.com', NULL, %s)", (T0,)).fetchall()
    assert sorted(r[0] for r in both) == sorted([acc.tenant_id, other.tenant_id])
    one = db.execute("SELECT tenant_id FROM api.dashboard_login_users('boss@example.com', %s, %s)",
                     (other.tenant_id, T0)).fetchall()
    assert one == [(other.tenant_id,)]


def test_campaign_and_inbox_changes_notify_the_dashboard_once_per_statement(db, acc) -> None:
    listener = psycopg.connect(db.info.dsn, autocommit=True)
    try:
        listener.execute("LISTEN pgwa_dashboard")
        cid = factories.running_campaign(db, acc, 3)
        db.execute("UPDATE core.campaigns SET sent = sent WHERE tenant_id = %s", (acc.tenant_id,))
        got = [n.payload for n in listener.notifies(timeout=2, stop_after=10)]
    finally:
        listener.close()
    assert f"campaign {acc.tenant_id}:{cid}" in got
    assert all(p.startswith(("campaign ", "inbox ")) for p in got)


def test_two_agents_taking_one_conversation_at_once_leave_it_with_the_first(db, acc) -> None:
    contact = db.execute("INSERT INTO core.contacts (tenant_id, wa_id) VALUES (%s, '14155550190') RETURNING contact_id",
                         (acc.tenant_id,)).fetchone()[0]
    db.execute("INSERT INTO core.conversations (number_id, contact_id, last_message_at) VALUES (%s, %s, now())",
               (acc.number_id, contact))
    ann = login(db, user(db, acc.tenant_id, "ann@example.com", "agent"))
    bob = login(db, user(db, acc.tenant_id, "bob@example.com", "agent"))
    take = "SELECT assigned_to FROM api.dashboard_take_conversation(%s, %s, %s, %s)"
    with psycopg.connect(db.info.dsn) as first, psycopg.connect(db.info.dsn, autocommit=True) as second:
        assert first.execute(take, (ann, acc.number_id, contact, T0)).fetchone()[0] == "ann@example.com"
        pid = second.info.backend_pid
        with ThreadPoolExecutor(1) as pool:
            late = pool.submit(lambda: sqlstate(second, take, (bob, acc.number_id, contact, T0)))
            # Bob's take waits on Ann's row lock (both passed the check before the UPDATE).
            deadline = time.monotonic() + 20
            while db.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0] != "Lock":
                assert time.monotonic() < deadline and not late.done(), "the second take did not wait"
                time.sleep(0.01)
            first.commit()
            assert late.result(timeout=30) == "PW403"
    assert db.execute("SELECT assigned_to FROM core.conversations WHERE contact_id = %s",
                      (contact,)).fetchone()[0] == "ann@example.com"


def test_inviting_an_email_again_replaces_its_open_invitation(db, acc) -> None:
    first, second = token_hash(new_token()), token_hash(new_token())
    db.execute("SELECT api.invite_user(%s, 'twice@example.com', 'viewer', %s, %s)", (acc.tenant_id, first, T0))
    db.execute("SELECT api.invite_user(%s, 'Twice@Example.com', 'agent', %s, %s)",
               (acc.tenant_id, second, T0 + timedelta(hours=1)))
    # The first link no longer works; the second does, with its own role.
    assert sqlstate(db, "SELECT api.invitation(%s, %s)", (first, T0 + timedelta(hours=2))) == "PW260"
    assert sqlstate(db, "SELECT api.accept_invitation(%s, %s, %s)", (first, HASH, T0 + timedelta(hours=2))) == "PW260"
    assert db.execute("SELECT role FROM api.accept_invitation(%s, %s, %s)",
                      (second, HASH, T0 + timedelta(hours=2))).fetchone()[0] == "agent"
    # Another tenant's invitation of the same e-mail is its own.
    other = factories.account(db, with_templates=False)
    theirs = token_hash(new_token())
    db.execute("SELECT api.invite_user(%s, 'shared@example.com', 'viewer', %s, %s)", (other.tenant_id, theirs, T0))
    db.execute("SELECT api.invite_user(%s, 'shared@example.com', 'viewer', %s, %s)",
               (acc.tenant_id, token_hash(new_token()), T0))
    assert db.execute("SELECT email FROM api.invitation(%s, %s)", (theirs, T0)).fetchone()[0] == "shared@example.com"
