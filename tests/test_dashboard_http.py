"""The dashboard over HTTP (Starlette's TestClient, and a real server for the event
stream): login, lockout, the session cookie, CSRF, role refusals from SQL, the inbox as
an agent sees it, invitations, tenant isolation, and events fed by NOTIFY."""

from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from api.dashboard.passwords import hash_password
from tests import factories
from tests.api_support import TestClient, api_client, live_server
from tests.test_bots import Inbox

PASSWORD = "a good long password"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_HASH = hash_password(PASSWORD)


def add_user(db: psycopg.Connection, tenant_id: int, email: str, role: str) -> int:
    return db.execute("SELECT user_id FROM api.create_user(%s, %s, %s, %s)",
                      (tenant_id, email, role, _HASH)).fetchone()[0]


def login(client: TestClient, email: str, password: str = PASSWORD) -> httpx.Response:
    form = client.get("/dashboard/login")
    token = CSRF.search(form.text).group(1)
    return client.post("/dashboard/login", data={"csrf_token": token, "email": email, "password": password},
                       follow_redirects=False)


def csrf_of(client: TestClient, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    return CSRF.search(page.text).group(1)


@pytest.fixture
def acc(db: psycopg.Connection) -> factories.Account:
    return factories.account(db)


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    with api_client(db_url) as c:
        yield c


def test_login_sets_a_hardened_cookie_and_logout_ends_the_session(db, acc, client: TestClient) -> None:
    add_user(db, acc.tenant_id, "boss@example.com", "admin")
    assert client.get("/dashboard/campaigns", follow_redirects=False).headers["location"].startswith("/dashboard/login")
    answer = login(client, "Boss@Example.com")
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard"
    cookie = next(h for h in answer.headers.get_list("set-cookie") if h.startswith("pgwa_session="))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and PASSWORD not in cookie
    page = client.get("/dashboard/campaigns")
    assert page.status_code == 200 and "boss@example.com" in page.text and PASSWORD not in page.text
    old_cookie = client.cookies.get("pgwa_session")
    out = client.post("/dashboard/logout", data={"csrf_token": CSRF.search(page.text).group(1)},
                      follow_redirects=False)
    assert out.status_code == 303
    # The old cookie, replayed, no longer opens anything: the session was revoked in SQL.
    client.cookies.set("pgwa_session", old_cookie)
    assert client.get("/dashboard/campaigns", follow_redirects=False).status_code == 303
    assert db.execute("SELECT count(*) FROM core.dashboard_sessions WHERE revoked_at IS NOT NULL").fetchone()[0] == 1


def test_a_tampered_or_foreign_cookie_is_not_a_session(db, acc, client: TestClient) -> None:
    add_user(db, acc.tenant_id, "boss@example.com", "admin")
    login(client, "boss@example.com")
    value = client.cookies.get("pgwa_session")
    token, _, mac = value.rpartition(".")
    client.cookies.set("pgwa_session", token + "x." + mac)
    assert client.get("/dashboard/campaigns", follow_redirects=False).status_code == 303
    client.cookies.set("pgwa_session", token)          # unsigned
    assert client.get("/dashboard/campaigns", follow_redirects=False).status_code == 303


def test_wrong_passwords_lock_the_account_and_never_show_the_password(db, acc, client: TestClient) -> None:
    add_user(db, acc.tenant_id, "ana@example.com", "agent")
    for _ in range(5):
        bad = login(client, "ana@example.com", "wrong-password-123")
        assert bad.status_code == 401 and "wrong-password-123" not in bad.text
        assert "pgwa_session" not in bad.headers.get("set-cookie", "")
    locked = login(client, "ana@example.com")      # the right password, too late
    assert locked.status_code == 429 and "Too many failed logins" in locked.text
    unknown = login(client, "nobody@example.com", "whatever-password")
    assert unknown.status_code == 401
    assert "Wrong e-mail or password." in unknown.text    # the same words as a wrong password


def test_a_post_without_the_sessions_csrf_token_is_refused(db, acc, client: TestClient) -> None:
    add_user(db, acc.tenant_id, "mark@example.com", "marketer")
    cid = factories.running_campaign(db, acc, 3)
    login(client, "mark@example.com")
    assert client.post(f"/dashboard/campaigns/{cid}/pause", data={}).status_code == 403
    assert client.post(f"/dashboard/campaigns/{cid}/pause", data={"csrf_token": "forged"}).status_code == 403
    assert factories.campaign(db, cid)["status"] == "running"
    token = csrf_of(client, f"/dashboard/campaigns/{cid}")
    done = client.post(f"/dashboard/campaigns/{cid}/pause", data={"csrf_token": token}, follow_redirects=False)
    assert done.status_code == 303 and factories.campaign(db, cid)["status"] == "paused"
    # htmx sends the token as a header.
    resumed = client.post(f"/dashboard/campaigns/{cid}/resume", headers={"X-CSRF-Token": token},
                          follow_redirects=False)
    assert resumed.status_code == 303 and factories.campaign(db, cid)["status"] == "running"


def test_the_campaign_page_shows_the_funnel_and_failures_by_meta_error(db, acc, client: TestClient) -> None:
    add_user(db, acc.tenant_id, "view@example.com", "viewer")
    cid = factories.running_campaign(db, acc, 3)
    factories.catch_up(db)
    claimed = factories.claim_all(db)
    factories.report(db, [factories.ok(claimed[0]), factories.err(claimed[1], 131026), factories.ok(claimed[2])])
    login(client, "view@example.com")
    page = client.get(f"/dashboard/campaigns/{cid}")
    assert page.status_code == 200
    assert re.search(r'data-step="sent">.*?<span class="value">2</span>', page.text, re.DOTALL)
    assert "131026" in page.text and 'id="pause"' not in page.text   # a viewer sees no buttons
    listed = client.get("/dashboard/campaigns").text
    assert re.search(rf'data-campaign="{cid}">.*?class="num sent">2<', listed, re.DOTALL)


def test_an_agent_is_refused_campaign_actions_by_sql(db, acc, client: TestClient) -> None:
    add_user(db, acc.tenant_id, "ana@example.com", "agent")
    cid = factories.running_campaign(db, acc, 3)
    login(client, "ana@example.com")
    page = client.get(f"/dashboard/campaigns/{cid}")
    assert page.status_code == 403 and "agent role lacks the campaigns.read permission" in page.text
    token = csrf_of(client, "/dashboard/inbox")
    refused = client.post(f"/dashboard/campaigns/{cid}/pause", data={"csrf_token": token})
    assert refused.status_code == 403 and "lacks the campaigns.manage permission" in refused.text
    assert factories.campaign(db, cid)["status"] == "running"
    assert client.get("/dashboard/users").status_code == 403


def test_an_agent_sees_their_own_and_unassigned_conversations_and_replies(db, db_url: str) -> None:
    inbox = Inbox.build(db)
    add_user(db, inbox.tenant_id, "ana@example.com", "agent")
    mine, free, theirs = inbox.sender(), inbox.sender(), inbox.sender()
    for who in (mine, free, theirs):
        inbox.say(f"hello from {who}", who)
    db.execute("SELECT api.assign_conversation(%s, %s, %s, 'ana@example.com')",
               (inbox.tenant_id, inbox.number_id, inbox.contact(mine)))
    db.execute("SELECT api.assign_conversation(%s, %s, %s, 'bob@example.com')",
               (inbox.tenant_id, inbox.number_id, inbox.contact(theirs)))
    with api_client(db_url) as client:
        login(client, "ana@example.com")
        page = client.get("/dashboard/inbox")
        listed = {int(c) for c in re.findall(r'data-contact="(\d+)"', page.text)}
        assert listed == {inbox.contact(mine), inbox.contact(free)}
        assert 'class="badge unread">1<' in page.text
        other = f"/dashboard/inbox/{inbox.number_id}/{inbox.contact(theirs)}"
        assert client.get(other).status_code == 403
        path = f"/dashboard/inbox/{inbox.number_id}/{inbox.contact(free)}"
        thread = client.get(path)
        assert thread.status_code == 200 and f"hello from {free}" in thread.text
        token = CSRF.search(thread.text).group(1)
        sent = client.post(f"{path}/reply", data={"csrf_token": token, "text": "Hi {{name}}, on it"},
                           follow_redirects=False)
        assert sent.status_code == 303
        assert inbox.replies_to(free) == ["Hi Ana Lima, on it"]
        assert client.post(f"{path}/take", data={"csrf_token": token}, follow_redirects=False).status_code == 303
        assert db.execute("SELECT assigned_to FROM core.conversations WHERE contact_id = %s",
                          (inbox.contact(free),)).fetchone()[0] == "ana@example.com"
        assert client.post(f"{other}/reply", data={"csrf_token": token, "text": "x"}).status_code == 403
        assert inbox.replies_to(theirs) == []


def test_a_user_of_tenant_a_never_sees_or_moves_tenant_b(db, acc, client: TestClient) -> None:
    other = factories.account(db)
    theirs = factories.running_campaign(db, other, 2)
    add_user(db, acc.tenant_id, "boss@example.com", "admin")
    add_user(db, other.tenant_id, "eve@example.com", "admin")
    login(client, "boss@example.com")
    assert client.get(f"/dashboard/campaigns/{theirs}").status_code == 404
    token = csrf_of(client, "/dashboard/campaigns")
    assert client.post(f"/dashboard/campaigns/{theirs}/cancel", data={"csrf_token": token}).status_code == 404
    assert factories.campaign(db, theirs)["status"] == "running"
    assert f'data-campaign="{theirs}"' not in client.get("/dashboard/campaigns").text
    assert client.get(f"/dashboard/inbox?number_id={other.number_id}").status_code == 404
    assert "eve@example.com" not in client.get("/dashboard/users").text


def test_an_invitation_link_makes_an_account_once(db, acc, client: TestClient, db_url: str) -> None:
    add_user(db, acc.tenant_id, "boss@example.com", "admin")
    login(client, "boss@example.com")
    token = csrf_of(client, "/dashboard/users")
    page = client.post("/dashboard/users/invite", data={"csrf_token": token, "email": "new@example.com",
                                                         "role": "agent"})
    assert page.status_code == 200
    link = re.search(r'<code id="invite-link">([^<]+)</code>', page.text).group(1)
    path = httpx.URL(link).path
    stored = db.execute("SELECT token_hash FROM core.dashboard_invitations").fetchone()[0]
    assert path.rsplit("/", 1)[1].encode() not in bytes(stored)
    with api_client(db_url) as invitee:
        form = invitee.get(path)
        assert form.status_code == 200 and "new@example.com" in form.text
        short = invitee.post(path, data={"csrf_token": CSRF.search(form.text).group(1), "password": "short",
                                         "confirm": "short"})
        assert short.status_code == 400
        joined = invitee.post(path, data={"csrf_token": CSRF.search(short.text).group(1), "password": PASSWORD,
                                          "confirm": PASSWORD}, follow_redirects=False)
        assert joined.status_code == 303
        assert "new@example.com · agent" in invitee.get("/dashboard/inbox").text
        assert invitee.get(path).status_code == 404
        assert invitee.post(path, data={"password": PASSWORD, "confirm": PASSWORD}).status_code == 404


def test_the_event_stream_carries_a_campaign_update_to_its_tenant_only(db, acc, db_url: str) -> None:
    other = factories.account(db)
    add_user(db, acc.tenant_id, "boss@example.com", "admin")
    add_user(db, other.tenant_id, "eve@example.com", "admin")
    cid = factories.running_campaign(db, acc, 2)
    theirs = factories.running_campaign(db, other, 2)
    with live_server(db_url) as url:
        assert httpx.get(f"{url}/dashboard/events").status_code == 401
        with httpx.Client(base_url=url) as boss, httpx.Client(base_url=url) as eve:
            for c, email in ((boss, "boss@example.com"), (eve, "eve@example.com")):
                assert login(c, email).status_code == 303
            got: dict[str, list[str]] = {"boss": [], "eve": []}
            ready = threading.Barrier(3, timeout=60)

            def read(c: httpx.Client, who: str) -> None:
                with c.stream("GET", "/dashboard/events", timeout=60) as stream:
                    assert stream.headers["content-type"].startswith("text/event-stream")
                    for line in stream.iter_lines():
                        if line == ": connected":
                            ready.wait()
                        got[who].append(line)
                        if line.startswith("data:") and f'"{theirs if who == "eve" else cid}"' in line:
                            return

            threads = [threading.Thread(target=read, args=(boss, "boss")),
                       threading.Thread(target=read, args=(eve, "eve"))]
            for t in threads:
                t.start()
            ready.wait()
            db.execute("SELECT api.pause_campaign(%s, %s)", (acc.tenant_id, cid))
            db.execute("SELECT api.pause_campaign(%s, %s)", (other.tenant_id, theirs))
            for t in threads:
                t.join(60)
            cookie = boss.cookies.get("pgwa_session")
    log = live_server.last_log    # type: ignore[attr-defined]
    assert PASSWORD not in log and cookie.split(".")[0] not in log
    assert "event: campaign" in got["boss"] and f'data: {{"ids":["{cid}"]}}' in got["boss"]
    assert not any(f'"{cid}"' in line for line in got["eve"])
    assert f'data: {{"ids":["{theirs}"]}}' in got["eve"]


def test_the_operator_bootstraps_an_admin_with_the_cli_who_can_then_log_in(
        db, acc, db_url: str, client: TestClient, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from pgwa.cli import main

    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("BOOT_PASSWORD", PASSWORD)
    assert main(["user", "add", "--tenant", str(acc.tenant_id), "--email", "ops@example.com",
                 "--password-env", "BOOT_PASSWORD"]) == 0
    out = capsys.readouterr()
    assert PASSWORD not in out.out + out.err
    stored = db.execute("SELECT password_hash FROM core.dashboard_users").fetchone()[0]
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert login(client, "ops@example.com").status_code == 303
    assert "ops@example.com · admin" in client.get("/dashboard/users").text
    # Without a terminal or a variable, a password is made and printed once.
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["user", "add", "--tenant", str(acc.tenant_id), "--email", "two@example.com", "--role", "agent"]) == 0
    made = capsys.readouterr().out.strip()
    assert len(made) >= 16 and login(client, "two@example.com", made).status_code == 303
    assert main(["user", "add", "--tenant", str(acc.tenant_id), "--email", "two@example.com",
                 "--password-env", "BOOT_PASSWORD"]) == 1     # PW302


def test_open_event_streams_do_not_hold_up_the_servers_shutdown(db, acc, db_url: str) -> None:
    add_user(db, acc.tenant_id, "boss@example.com", "admin")
    ended = threading.Event()
    with live_server(db_url) as url:
        client = httpx.Client(base_url=url)
        assert login(client, "boss@example.com").status_code == 303
        connected = threading.Event()

        def hold() -> None:
            with client.stream("GET", "/dashboard/events", timeout=30) as stream:
                for line in stream.iter_lines():
                    if line == ": connected":
                        connected.set()
            ended.set()

        reader = threading.Thread(target=hold, daemon=True)
        reader.start()
        assert connected.wait(10)
        stopping = time.monotonic()
    # live_server kills a server that has not stopped within 10 s of SIGTERM.
    assert time.monotonic() - stopping < 9
    assert ended.wait(5)


def test_an_admin_changes_roles_and_disables_users_and_no_one_else_may(db, acc, client: TestClient,
                                                                       db_url: str) -> None:
    add_user(db, acc.tenant_id, "boss@example.com", "admin")
    ana = add_user(db, acc.tenant_id, "ana@example.com", "agent")
    other = factories.account(db)
    eve = add_user(db, other.tenant_id, "eve@example.com", "agent")
    with api_client(db_url) as agent:
        login(agent, "ana@example.com")
        token = csrf_of(agent, "/dashboard/inbox")
        refused = agent.post(f"/dashboard/users/{ana}/role", data={"csrf_token": token, "role": "admin"})
        assert refused.status_code == 403
        login(client, "boss@example.com")
        admin_token = csrf_of(client, "/dashboard/users")
        changed = client.post(f"/dashboard/users/{ana}/role", data={"csrf_token": admin_token, "role": "marketer"},
                              follow_redirects=False)
        assert changed.status_code == 303
        # Effective on the agent's next request: now a marketer, campaigns open.
        assert agent.get("/dashboard/campaigns").status_code == 200
        assert client.post(f"/dashboard/users/{eve}/disable", data={"csrf_token": admin_token}).status_code == 404
        assert client.post(f"/dashboard/users/{ana}/disable", data={"csrf_token": admin_token},
                           follow_redirects=False).status_code == 303
        assert agent.get("/dashboard/campaigns", follow_redirects=False).status_code == 303   # to the login
    assert db.execute("SELECT role, disabled_at IS NOT NULL FROM core.dashboard_users WHERE user_id = %s",
                      (ana,)).fetchone() == ("marketer", True)
    assert db.execute("SELECT disabled_at FROM core.dashboard_users WHERE user_id = %s", (eve,)).fetchone()[0] is None


def _invite(client: TestClient, email: str) -> str:
    token = csrf_of(client, "/dashboard/users")
    page = client.post("/dashboard/users/invite", data={"csrf_token": token, "email": email, "role": "admin"})
    return httpx.URL(re.search(r'<code id="invite-link">([^<]+)</code>', page.text).group(1)).path


def test_a_cross_site_post_cannot_accept_an_invitation_for_the_visitor(db, acc, client: TestClient,
                                                                         db_url: str) -> None:
    """Login CSRF: an attacker invites themselves, then makes a victim's browser post the
    accept form (no cookie of the form's page, or a token of the attacker's own page): the
    victim must not end up logged into the attacker's account."""
    add_user(db, acc.tenant_id, "boss@example.com", "admin")
    login(client, "boss@example.com")
    path = _invite(client, "attacker@example.com")
    data = {"password": PASSWORD, "confirm": PASSWORD}
    with api_client(db_url) as attacker, api_client(db_url) as victim:
        form = attacker.get(path)
        cookie = next(h for h in form.headers.get_list("set-cookie") if h.startswith("pgwa_invite_csrf="))
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard/invitations" in cookie
        attackers_token = CSRF.search(form.text).group(1)
        for forged in ({}, {"csrf_token": ""}, {"csrf_token": attackers_token}):
            answer = victim.post(path, data={**data, **forged}, follow_redirects=False)
            assert answer.status_code == 403 and "The form expired" in answer.text
            assert "pgwa_session" not in victim.cookies
        # The victim's own cookie with another page's token does not pass either.
        victim.get(path)
        assert victim.post(path, data={**data, "csrf_token": attackers_token}).status_code == 403
        assert db.execute("SELECT count(*) FROM core.dashboard_users WHERE email = 'attacker@example.com'"
                          ).fetchone()[0] == 0
        assert db.execute("SELECT accepted_at FROM core.dashboard_invitations").fetchone()[0] is None
        # The form's own visitor still joins, and the form's cookie is dropped.
        joined = attacker.post(path, data={**data, "csrf_token": attackers_token}, follow_redirects=False)
        assert joined.status_code == 303 and "pgwa_invite_csrf" not in attacker.cookies
    # The login form too: without its page's cookie, no session.
    with api_client(db_url) as victim:
        answer = victim.post("/dashboard/login", data={"csrf_token": "x", "email": "attacker@example.com",
                                                       "password": PASSWORD}, follow_redirects=False)
        assert answer.status_code == 403 and "pgwa_session" not in victim.cookies


def test_every_dashboard_response_carries_the_security_headers(db, acc, client: TestClient) -> None:
    add_user(db, acc.tenant_id, "boss@example.com", "admin")
    anonymous = [client.get("/dashboard/login"), client.get("/static/dashboard.js"),
                 client.get("/dashboard/campaigns", follow_redirects=False),   # a redirect to the login page
                 client.get("/dashboard/events"),                             # 401
                 client.get("/dashboard/invitations/nonesuch")]               # 404
    login(client, "boss@example.com")
    cid = factories.running_campaign(db, acc, 2)
    pages = [client.get("/dashboard/campaigns"), client.get(f"/dashboard/campaigns/{cid}?fragment=1"),
             client.get("/dashboard/inbox"), client.get("/dashboard/users"),
             client.post(f"/dashboard/campaigns/{cid}/pause", data={})]       # 403 (no CSRF token)
    for answer in anonymous + pages:
        where = f"{answer.request.method} {answer.request.url.path} {answer.status_code}"
        csp = answer.headers.get("content-security-policy", "")
        assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp, where
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, where
        assert answer.headers["x-content-type-options"] == "nosniff", where
        assert answer.headers["referrer-policy"] == "same-origin", where
        assert answer.headers["x-frame-options"] == "DENY", where
    # What the policy refuses is not in any page: no inline script, handler or style.
    for answer in [*pages[:4], client.get(f"/dashboard/campaigns/{cid}"), client.get("/dashboard/campaigns/new")]:
        assert answer.status_code == 200
        assert not re.search(r"<script(?![^>]*\bsrc=)|\son[a-z]+=|\sstyle=|hx-on|javascript:", answer.text), \
            answer.request.url.path
        if "fragment" not in str(answer.request.url):
            assert '"allowEval": false' in answer.text and '"includeIndicatorStyles": false' in answer.text
