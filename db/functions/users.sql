-- Dashboard users, invitations, sessions and role checks (tables: 0108_dashboard_users).
--
--   browser ── cookie (signed, holds a random session token) ──> api/dashboard: sha256(token)
--        ──> SELECT … FROM api.<function>(api.dashboard_authorize(<hash>, <action>), …)
--
-- Like API keys, a dashboard request resolves its tenant inside the one statement it
-- runs, and the role check happens there too: a role without the action is PW403 from
-- SQL, whatever the page showed. Passwords are hashed and checked with argon2 in Python;
-- only the PHC string is stored. Tokens (sessions, invitations) are made in Python and
-- stored as their sha256. Time is a parameter (p_now) wherever behaviour depends on it.

-------------------------------------------------------------------------------
-- Helpers
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION core.dashboard_email(p_email text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = '' AS $$
BEGIN
    IF p_email IS NULL OR lower(btrim(p_email)) !~ '^[^@\s]+@[^@\s]+$' OR length(btrim(p_email)) > 254 THEN
        RAISE EXCEPTION 'email "%" is not an e-mail address', left(p_email, 254) USING ERRCODE = 'PW100',
            HINT = 'Give an address like ana@example.com (at most 254 characters).';
    END IF;
    RETURN lower(btrim(p_email));
END
$$;

CREATE OR REPLACE FUNCTION core.dashboard_check(p_role text, p_password_hash text, p_token_hash bytea)
RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = '' AS $$
BEGIN
    IF p_role IS NOT NULL AND p_role NOT IN ('admin', 'marketer', 'agent', 'viewer') THEN
        RAISE EXCEPTION 'role "%" is not one of admin, marketer, agent, viewer', p_role USING ERRCODE = 'PW100',
            HINT = 'admin: everything, users too; marketer: campaigns; agent: the inbox; viewer: reads only.';
    END IF;
    IF p_password_hash IS NOT NULL AND p_password_hash NOT LIKE '$argon2%' THEN
        RAISE EXCEPTION 'password_hash is not an argon2 hash' USING ERRCODE = 'PW100',
            HINT = 'Hash the password with argon2 (argon2-cffi PasswordHasher) and pass its PHC string.';
    END IF;
    IF p_token_hash IS NOT NULL AND length(p_token_hash) <> 32 THEN
        RAISE EXCEPTION 'token hash is % bytes, not 32', length(p_token_hash) USING ERRCODE = 'PW100',
            HINT = 'Pass the sha256 of the token, never the token.';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION core.dashboard_user_row(p_user core.dashboard_users) RETURNS api.dashboard_user
LANGUAGE sql IMMUTABLE SET search_path = '' AS $$
    SELECT ROW(p_user.user_id, p_user.tenant_id, p_user.email, p_user.role, p_user.created_at, p_user.disabled_at,
               p_user.last_login_at, p_user.locked_until)::api.dashboard_user
$$;

-- The live session of a token hash with its user, or PW401.
CREATE OR REPLACE FUNCTION core.dashboard_session_user(p_token_hash bytea, p_now timestamptz)
RETURNS core.dashboard_users
LANGUAGE plpgsql STABLE SET search_path = '' AS $$
DECLARE
    v_user core.dashboard_users;
BEGIN
    SELECT u.* INTO v_user FROM core.dashboard_sessions s JOIN core.dashboard_users u ON u.user_id = s.user_id
    WHERE s.token_hash = p_token_hash AND s.revoked_at IS NULL AND s.expires_at > p_now AND u.disabled_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'not logged in: the session is unknown, expired or ended' USING ERRCODE = 'PW401',
            HINT = 'Log in again at /dashboard/login.';
    END IF;
    RETURN v_user;
END
$$;

-- PW403 unless the role holds the action.
CREATE OR REPLACE FUNCTION core.dashboard_require(p_role text, p_action text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = '' AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM core.dashboard_role_actions WHERE role = p_role AND action = p_action) THEN
        RAISE EXCEPTION 'the % role lacks the % permission', p_role, p_action USING ERRCODE = 'PW403',
            HINT = 'Ask an admin of the workspace for a role that may (admin, marketer, agent, viewer).';
    END IF;
END
$$;

-------------------------------------------------------------------------------
-- Users and invitations
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION api.create_user(p_tenant_id bigint, p_email text, p_role text, p_password_hash text,
                                           p_now timestamptz DEFAULT now())
RETURNS api.dashboard_user
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_email text := core.dashboard_email(p_email);
    v_user core.dashboard_users;
BEGIN
    PERFORM core.dashboard_check(coalesce(p_role, ''), coalesce(p_password_hash, ''), NULL);
    IF NOT EXISTS (SELECT 1 FROM core.tenants WHERE tenant_id = p_tenant_id) THEN
        RAISE EXCEPTION 'tenant % does not exist', p_tenant_id USING ERRCODE = 'PW205',
            HINT = 'Create the tenant first (pgwa tenant create).';
    END IF;
    INSERT INTO core.dashboard_users (tenant_id, email, password_hash, role, created_at)
    VALUES (p_tenant_id, v_email, p_password_hash, p_role, p_now)
    ON CONFLICT ON CONSTRAINT dashboard_users_tenant_email DO NOTHING
    RETURNING * INTO v_user;
    IF v_user.user_id IS NULL THEN
        RAISE EXCEPTION 'a user with e-mail % already exists in tenant %', v_email, p_tenant_id
            USING ERRCODE = 'PW302', HINT = 'Log in as that user, or give another e-mail.';
    END IF;
    RETURN core.dashboard_user_row(v_user);
END
$$;
COMMENT ON FUNCTION api.create_user(bigint, text, text, text, timestamptz) IS
    'Creates a dashboard user of a tenant with a role (admin, marketer, agent, viewer) and an argon2 password hash made by the caller; the e-mail is lower-cased. Returns the user, never the hash. Raises PW100 for a bad e-mail, role or hash, PW205 for an unknown tenant, PW302 when the e-mail is taken in the tenant.';

CREATE OR REPLACE FUNCTION api.dashboard_users(p_tenant_id bigint) RETURNS SETOF api.dashboard_user
LANGUAGE sql SECURITY DEFINER STABLE SET search_path = '' AS $$
    SELECT core.dashboard_user_row(u) FROM core.dashboard_users u WHERE u.tenant_id = p_tenant_id ORDER BY u.email
$$;
COMMENT ON FUNCTION api.dashboard_users(bigint) IS
    'Lists the tenant''s dashboard users (e-mail, role, created, disabled, last login, locked until), never their password hashes.';

CREATE OR REPLACE FUNCTION api.set_user_role(p_tenant_id bigint, p_user_id bigint, p_role text)
RETURNS api.dashboard_user
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_user core.dashboard_users;
BEGIN
    PERFORM core.dashboard_check(coalesce(p_role, ''), NULL, NULL);
    SELECT * INTO v_user FROM core.dashboard_users WHERE user_id = p_user_id AND tenant_id = p_tenant_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % not found', p_user_id USING ERRCODE = 'PW260',
            HINT = 'List the tenant''s users with api.dashboard_users().';
    END IF;
    IF v_user.role = 'admin' AND p_role <> 'admin' AND v_user.disabled_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM core.dashboard_users WHERE tenant_id = p_tenant_id AND role = 'admin'
                       AND disabled_at IS NULL AND user_id <> p_user_id) THEN
        RAISE EXCEPTION 'user % is the tenant''s last admin', p_user_id USING ERRCODE = 'PW301',
            HINT = 'Make another user admin first.';
    END IF;
    UPDATE core.dashboard_users SET role = p_role WHERE user_id = p_user_id RETURNING * INTO v_user;
    RETURN core.dashboard_user_row(v_user);
END
$$;
COMMENT ON FUNCTION api.set_user_role(bigint, bigint, text) IS
    'Gives one of the tenant''s dashboard users another role, effective on their next request. Returns the user. Raises PW100 for an unknown role, PW260 when the tenant has no such user, PW301 when it would leave the tenant without an enabled admin.';

CREATE OR REPLACE FUNCTION api.disable_user(p_tenant_id bigint, p_user_id bigint, p_now timestamptz DEFAULT now())
RETURNS api.dashboard_user
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_user core.dashboard_users;
BEGIN
    SELECT * INTO v_user FROM core.dashboard_users WHERE user_id = p_user_id AND tenant_id = p_tenant_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % not found', p_user_id USING ERRCODE = 'PW260',
            HINT = 'List the tenant''s users with api.dashboard_users().';
    END IF;
    IF v_user.role = 'admin' AND v_user.disabled_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM core.dashboard_users WHERE tenant_id = p_tenant_id AND role = 'admin'
                       AND disabled_at IS NULL AND user_id <> p_user_id) THEN
        RAISE EXCEPTION 'user % is the tenant''s last admin', p_user_id USING ERRCODE = 'PW301',
            HINT = 'Make another user admin first.';
    END IF;
    UPDATE core.dashboard_users SET disabled_at = coalesce(disabled_at, p_now) WHERE user_id = p_user_id
    RETURNING * INTO v_user;
    UPDATE core.dashboard_sessions SET revoked_at = p_now WHERE user_id = p_user_id AND revoked_at IS NULL;
    RETURN core.dashboard_user_row(v_user);
END
$$;
COMMENT ON FUNCTION api.disable_user(bigint, bigint, timestamptz) IS
    'Disables one of the tenant''s dashboard users (idempotent) and ends their sessions at once. Returns the user. Raises PW260 when the tenant has no such user, PW301 for the tenant''s last enabled admin.';

CREATE OR REPLACE FUNCTION api.invite_user(p_tenant_id bigint, p_email text, p_role text, p_token_hash bytea,
                                           p_now timestamptz DEFAULT now())
RETURNS api.dashboard_invitation
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_email text := core.dashboard_email(p_email);
    v_result api.dashboard_invitation;
BEGIN
    PERFORM core.dashboard_check(coalesce(p_role, ''), NULL, coalesce(p_token_hash, ''::bytea));
    IF NOT EXISTS (SELECT 1 FROM core.tenants WHERE tenant_id = p_tenant_id) THEN
        RAISE EXCEPTION 'tenant % does not exist', p_tenant_id USING ERRCODE = 'PW205',
            HINT = 'Create the tenant first (pgwa tenant create).';
    END IF;
    IF EXISTS (SELECT 1 FROM core.dashboard_users WHERE tenant_id = p_tenant_id AND email = v_email) THEN
        RAISE EXCEPTION 'a user with e-mail % already exists in this tenant', v_email USING ERRCODE = 'PW302',
            HINT = 'Change that user''s role instead.';
    END IF;
    -- Inviting an e-mail again replaces its open invitation: only the newest link (and its
    -- role) works. One invitation at a time per e-mail and tenant.
    PERFORM pg_advisory_xact_lock(hashtextextended('pgwa.invite:' || p_tenant_id || ':' || v_email, 0));
    UPDATE core.dashboard_invitations SET revoked_at = p_now
    WHERE tenant_id = p_tenant_id AND email = v_email AND accepted_at IS NULL AND revoked_at IS NULL;
    INSERT INTO core.dashboard_invitations (tenant_id, email, role, token_hash, created_at, expires_at)
    SELECT p_tenant_id, v_email, p_role, p_token_hash, p_now, p_now + s.dashboard_invitation_ttl FROM core.settings s
    RETURNING invitation_id, tenant_id, email, role, created_at, expires_at, accepted_at, revoked_at INTO v_result;
    RETURN v_result;
END
$$;
COMMENT ON FUNCTION api.invite_user(bigint, text, text, bytea, timestamptz) IS
    'Invites an e-mail into the tenant with a role: stores the sha256 of the link''s random token (made by the caller, sent to the invitee, never stored), expiring after core.settings.dashboard_invitation_ttl; an open invitation of the same e-mail is revoked (only the newest link works). Returns the invitation. Raises PW100 for a bad e-mail, role or hash, PW205 for an unknown tenant, PW302 when the e-mail is already a user of the tenant.';

CREATE OR REPLACE FUNCTION api.invitation(p_token_hash bytea, p_now timestamptz DEFAULT now())
RETURNS api.dashboard_invitation
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
DECLARE
    v_result api.dashboard_invitation;
BEGIN
    SELECT invitation_id, tenant_id, email, role, created_at, expires_at, accepted_at, revoked_at INTO v_result
    FROM core.dashboard_invitations
    WHERE token_hash = p_token_hash AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > p_now;
    IF v_result.invitation_id IS NULL THEN
        RAISE EXCEPTION 'the invitation is unknown, used or expired' USING ERRCODE = 'PW260',
            HINT = 'Ask an admin of the workspace for a new invitation.';
    END IF;
    RETURN v_result;
END
$$;
COMMENT ON FUNCTION api.invitation(bytea, timestamptz) IS
    'The open invitation whose link token has sha256 p_token_hash (for the accept page: its e-mail and role). Raises PW260 when it is unknown, already used, revoked or expired.';

CREATE OR REPLACE FUNCTION api.accept_invitation(p_token_hash bytea, p_password_hash text,
                                                 p_now timestamptz DEFAULT now())
RETURNS api.dashboard_user
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_invitation core.dashboard_invitations;
    v_user api.dashboard_user;
BEGIN
    PERFORM core.dashboard_check(NULL, coalesce(p_password_hash, ''), NULL);
    -- Single use: the one statement that claims the invitation is guarded by its state.
    UPDATE core.dashboard_invitations SET accepted_at = p_now
    WHERE token_hash = p_token_hash AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > p_now
    RETURNING * INTO v_invitation;
    IF v_invitation.invitation_id IS NULL THEN
        RAISE EXCEPTION 'the invitation is unknown, used or expired' USING ERRCODE = 'PW260',
            HINT = 'Ask an admin of the workspace for a new invitation.';
    END IF;
    v_user := api.create_user(v_invitation.tenant_id, v_invitation.email, v_invitation.role, p_password_hash, p_now);
    UPDATE core.dashboard_invitations SET user_id = v_user.user_id WHERE invitation_id = v_invitation.invitation_id;
    RETURN v_user;
END
$$;
COMMENT ON FUNCTION api.accept_invitation(bytea, text, timestamptz) IS
    'Accepts an invitation once: creates its user with the argon2 password hash given and marks the invitation used. Returns the user. Raises PW260 for an unknown, used, revoked or expired invitation, PW100 for a hash that is not argon2, PW302 when the e-mail became a user meanwhile.';

-------------------------------------------------------------------------------
-- Login, sessions, lockout
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION api.dashboard_login_users(p_email text, p_tenant_id bigint DEFAULT NULL,
                                                     p_now timestamptz DEFAULT now())
RETURNS SETOF api.dashboard_login_user
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
DECLARE
    v_email text := lower(btrim(coalesce(p_email, '')));
    v_locked_until timestamptz;
BEGIN
    RETURN QUERY
    SELECT u.user_id, u.tenant_id, u.password_hash FROM core.dashboard_users u
    WHERE u.email = v_email AND (p_tenant_id IS NULL OR u.tenant_id = p_tenant_id) AND u.disabled_at IS NULL
      AND (u.locked_until IS NULL OR u.locked_until <= p_now)
    ORDER BY u.tenant_id;
    IF FOUND THEN
        RETURN;
    END IF;
    SELECT max(u.locked_until) INTO v_locked_until FROM core.dashboard_users u
    WHERE u.email = v_email AND (p_tenant_id IS NULL OR u.tenant_id = p_tenant_id) AND u.disabled_at IS NULL;
    IF v_locked_until > p_now THEN
        RAISE EXCEPTION 'too many failed logins: locked until %', v_locked_until USING ERRCODE = 'PW460',
            DETAIL = json_build_object('retry_after_s', ceil(extract(epoch FROM v_locked_until - p_now)))::text,
            HINT = 'Wait, or ask an admin of the workspace.';
    END IF;
END
$$;
COMMENT ON FUNCTION api.dashboard_login_users(text, bigint, timestamptz) IS
    'The enabled, unlocked dashboard users with this e-mail (in one tenant when p_tenant_id is given) and their argon2 password hashes, for the login to verify the password against; no row for an unknown e-mail. Raises PW460 when every such user is locked out after failed logins.';

CREATE OR REPLACE FUNCTION api.dashboard_login_failed(p_email text, p_tenant_id bigint DEFAULT NULL,
                                                      p_now timestamptz DEFAULT now())
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_locked boolean;
BEGIN
    -- A failure counts within the window that its first one opened; the failure that
    -- reaches dashboard_max_failures locks the user for dashboard_lockout.
    WITH locked AS (
        UPDATE core.dashboard_users u
        SET failed_logins = CASE WHEN c.failures >= s.dashboard_max_failures THEN 0 ELSE c.failures END,
            failed_since = CASE WHEN c.failures >= s.dashboard_max_failures THEN NULL
                                WHEN c.failures = 1 THEN p_now ELSE u.failed_since END,
            locked_until = CASE WHEN c.failures >= s.dashboard_max_failures THEN p_now + s.dashboard_lockout END
        FROM core.settings s,
             (SELECT x.user_id, CASE WHEN x.failed_since > p_now - st.dashboard_failure_window
                                     THEN x.failed_logins + 1 ELSE 1 END AS failures
              FROM core.dashboard_users x, core.settings st
              WHERE x.email = lower(btrim(coalesce(p_email, ''))) AND (p_tenant_id IS NULL OR x.tenant_id = p_tenant_id)
                AND x.disabled_at IS NULL AND (x.locked_until IS NULL OR x.locked_until <= p_now)) c
        WHERE u.user_id = c.user_id
        RETURNING c.failures >= s.dashboard_max_failures AS locks
    )
    SELECT coalesce(bool_or(locks), false) INTO v_locked FROM locked;
    RETURN v_locked;
END
$$;
COMMENT ON FUNCTION api.dashboard_login_failed(text, bigint, timestamptz) IS
    'Records a failed login (wrong password) against the users of this e-mail (in one tenant when given): after core.settings.dashboard_max_failures failures within dashboard_failure_window the user is locked out for dashboard_lockout. Returns whether this failure locked someone; an unknown e-mail changes nothing.';

CREATE OR REPLACE FUNCTION api.dashboard_login(p_user_id bigint, p_token_hash bytea, p_now timestamptz DEFAULT now())
RETURNS api.dashboard_session
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_user core.dashboard_users;
BEGIN
    PERFORM core.dashboard_check(NULL, NULL, coalesce(p_token_hash, ''::bytea));
    UPDATE core.dashboard_users SET failed_logins = 0, failed_since = NULL, locked_until = NULL, last_login_at = p_now
    WHERE user_id = p_user_id AND disabled_at IS NULL AND (locked_until IS NULL OR locked_until <= p_now)
    RETURNING * INTO v_user;
    IF v_user.user_id IS NULL THEN
        RAISE EXCEPTION 'user % cannot log in: unknown, disabled or locked', p_user_id USING ERRCODE = 'PW401',
            HINT = 'Check the password with api.dashboard_login_users() first.';
    END IF;
    INSERT INTO core.dashboard_sessions (user_id, token_hash, created_at, expires_at, last_seen_at)
    SELECT p_user_id, p_token_hash, p_now, p_now + s.dashboard_session_ttl, p_now FROM core.settings s;
    RETURN api.dashboard_session(p_token_hash, p_now);
END
$$;
COMMENT ON FUNCTION api.dashboard_login(bigint, bytea, timestamptz) IS
    'Starts a session for a user whose password the caller has just verified (argon2, against api.dashboard_login_users): clears the failed logins and stores the sha256 of the session''s random token, expiring after core.settings.dashboard_session_ttl. Returns the session. Raises PW401 for an unknown, disabled or locked user, PW100 for a hash that is not 32 bytes.';

CREATE OR REPLACE FUNCTION api.dashboard_session(p_token_hash bytea, p_now timestamptz DEFAULT now())
RETURNS api.dashboard_session
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
DECLARE
    v_result api.dashboard_session;
BEGIN
    SELECT s.session_id, u.tenant_id, t.name, u.user_id, u.email, u.role,
           ARRAY(SELECT a.action FROM core.dashboard_role_actions a WHERE a.role = u.role ORDER BY a.action),
           s.expires_at
    INTO v_result
    FROM core.dashboard_sessions s
    JOIN core.dashboard_users u ON u.user_id = s.user_id
    JOIN core.tenants t ON t.tenant_id = u.tenant_id
    WHERE s.token_hash = p_token_hash AND s.revoked_at IS NULL AND s.expires_at > p_now AND u.disabled_at IS NULL;
    IF v_result.session_id IS NULL THEN
        RAISE EXCEPTION 'not logged in: the session is unknown, expired or ended' USING ERRCODE = 'PW401',
            HINT = 'Log in again at /dashboard/login.';
    END IF;
    RETURN v_result;
END
$$;
COMMENT ON FUNCTION api.dashboard_session(bytea, timestamptz) IS
    'The live session whose token has sha256 p_token_hash: its tenant, user, e-mail, role and the actions that role holds. Raises PW401 for an unknown, expired or revoked session or a disabled user.';

CREATE OR REPLACE FUNCTION api.dashboard_authorize(p_token_hash bytea, p_action text, p_now timestamptz DEFAULT now())
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_user core.dashboard_users := core.dashboard_session_user(p_token_hash, p_now);
BEGIN
    PERFORM core.dashboard_require(v_user.role, p_action);
    UPDATE core.dashboard_sessions SET last_seen_at = p_now
    WHERE token_hash = p_token_hash AND last_seen_at <= p_now - interval '1 minute';
    RETURN v_user.tenant_id;
END
$$;
COMMENT ON FUNCTION api.dashboard_authorize(bytea, text, timestamptz) IS
    'Returns the tenant of the live session whose token has sha256 p_token_hash when its user''s role holds p_action (campaigns.read, campaigns.manage, inbox.read, inbox.reply, inbox.assign, users.manage), for the dashboard''s one statement per request: SELECT … FROM api.f(api.dashboard_authorize(…), …). Raises PW401 for no live session, PW403 when the role lacks the action.';

CREATE OR REPLACE FUNCTION api.dashboard_authorize_conversation(p_token_hash bytea, p_action text, p_number_id bigint,
                                                                p_contact_id bigint, p_now timestamptz DEFAULT now())
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_tenant_id bigint := api.dashboard_authorize(p_token_hash, p_action, p_now);
    v_user core.dashboard_users := core.dashboard_session_user(p_token_hash, p_now);
    v_assigned_to text;
BEGIN
    -- An agent works on the conversations assigned to them and on the unassigned queue.
    IF v_user.role = 'agent' THEN
        SELECT v.assigned_to INTO v_assigned_to FROM core.conversations v
        JOIN core.contacts c ON c.contact_id = v.contact_id AND c.tenant_id = v_tenant_id
        WHERE v.number_id = p_number_id AND v.contact_id = p_contact_id;
        IF v_assigned_to IS NOT NULL AND v_assigned_to <> v_user.email THEN
            RAISE EXCEPTION 'this conversation is assigned to another agent' USING ERRCODE = 'PW403',
                HINT = 'Agents see the conversations assigned to them and the unassigned queue.';
        END IF;
    END IF;
    RETURN v_tenant_id;
END
$$;
COMMENT ON FUNCTION api.dashboard_authorize_conversation(bytea, text, bigint, bigint, timestamptz) IS
    'As api.dashboard_authorize, for an action on one conversation: an agent is also refused (PW403) a conversation assigned to someone else. Returns the tenant. Raises PW401 for no live session, PW403 when the role lacks the action or the conversation is another agent''s; ids of another tenant are then not found by the function called.';

CREATE OR REPLACE FUNCTION api.dashboard_take_conversation(p_token_hash bytea, p_number_id bigint, p_contact_id bigint,
                                                           p_now timestamptz DEFAULT now())
RETURNS api.conversation_summary
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_tenant_id bigint := api.dashboard_authorize_conversation(p_token_hash, 'inbox.reply', p_number_id, p_contact_id,
                                                               p_now);
    v_user core.dashboard_users := core.dashboard_session_user(p_token_hash, p_now);
BEGIN
    PERFORM core.conversation_for(v_tenant_id, p_number_id, p_contact_id);      -- PW202/PW209
    -- One statement decides: of two agents taking the same conversation at once, the
    -- second's UPDATE waits for the first's row lock, sees it taken and changes nothing.
    UPDATE core.conversations SET assigned_to = v_user.email, assigned_at = p_now,
        needs_human = false, needs_human_reason = NULL, needs_human_at = NULL
    WHERE number_id = p_number_id AND contact_id = p_contact_id
      AND (v_user.role <> 'agent' OR assigned_to IS NULL OR assigned_to = v_user.email);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'conversation with contact % was just taken by another agent', p_contact_id
            USING ERRCODE = 'PW403', HINT = 'Reload the inbox: it is no longer in the unassigned queue.';
    END IF;
    RETURN (SELECT s FROM core.conversation_summaries(p_number_id, ARRAY[p_contact_id]) s);
END
$$;
COMMENT ON FUNCTION api.dashboard_take_conversation(bytea, bigint, bigint, timestamptz) IS
    'Assigns a conversation to the session''s own user (an agent takes one from the unassigned queue). Returns the conversation. Raises PW401 for no live session, PW403 when the role may not reply or the conversation is another agent''s, PW202/PW209 for ids not the tenant''s.';

CREATE OR REPLACE FUNCTION api.dashboard_logout(p_token_hash bytea, p_now timestamptz DEFAULT now()) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
BEGIN
    UPDATE core.dashboard_sessions SET revoked_at = p_now WHERE token_hash = p_token_hash AND revoked_at IS NULL;
    RETURN FOUND;
END
$$;
COMMENT ON FUNCTION api.dashboard_logout(bytea, timestamptz) IS
    'Ends the session whose token has sha256 p_token_hash at once. Returns whether a live session ended (false when it had already).';

CREATE OR REPLACE FUNCTION api.dashboard_cookie_key() RETURNS bytea
LANGUAGE sql SECURITY DEFINER STABLE SET search_path = '' AS $$
    SELECT s.dashboard_cookie_key FROM core.settings s
$$;
COMMENT ON FUNCTION api.dashboard_cookie_key() IS
    'The key every API process signs dashboard cookies and derives CSRF tokens with (core.settings.dashboard_cookie_key, random per database).';

-------------------------------------------------------------------------------
-- Live pages: NOTIFY pgwa_dashboard, at most once per statement
-------------------------------------------------------------------------------
-- Payload: "<kind> <tenant_id>:<id>,<tenant_id>:<id>,…" (kind campaign or inbox; the id
-- a campaign_id, or number_id.contact_id), cut to 7,000 bytes; the API's one listener
-- (api/dashboard/events.py) fans it out to the open pages of each tenant.

CREATE OR REPLACE FUNCTION core.notify_dashboard_campaigns() RETURNS trigger
LANGUAGE plpgsql SET search_path = '' AS $$
BEGIN
    PERFORM pg_notify('pgwa_dashboard', 'campaign ' || left(string_agg(DISTINCT n.tenant_id || ':' || n.campaign_id, ','), 7000))
    FROM changed n
    HAVING count(*) > 0;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION core.notify_dashboard_inbox() RETURNS trigger
LANGUAGE plpgsql SET search_path = '' AS $$
BEGIN
    PERFORM pg_notify('pgwa_dashboard', 'inbox ' || left(string_agg(DISTINCT w.tenant_id || ':' || i.number_id || '.' || i.contact_id, ','), 7000))
    FROM changed i JOIN core.wa_numbers w ON w.number_id = i.number_id
    -- A message sent through the send API is left out: a NOTIFY would serialise those
    -- transactions' commits (PostgreSQL's notify lock); an open page sees it on its next refresh.
    WHERE NOT (i.direction = 'out' AND i.outbound_id IS NOT NULL AND EXISTS (
        SELECT 1 FROM core.outbound_messages o WHERE o.outbound_id = i.outbound_id AND o.kind = 'api'))
    HAVING count(*) > 0;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER campaigns_notify_dashboard AFTER UPDATE ON core.campaigns
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION core.notify_dashboard_campaigns();
CREATE OR REPLACE TRIGGER inbox_messages_notify_dashboard AFTER INSERT ON core.inbox_messages
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION core.notify_dashboard_inbox();

-------------------------------------------------------------------------------
-- Grants
-------------------------------------------------------------------------------

REVOKE ALL ON FUNCTION api.create_user(bigint, text, text, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.dashboard_users(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.set_user_role(bigint, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.disable_user(bigint, bigint, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.invite_user(bigint, text, text, bytea, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.invitation(bytea, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.accept_invitation(bytea, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.dashboard_login_users(text, bigint, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.dashboard_login_failed(text, bigint, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.dashboard_login(bigint, bytea, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.dashboard_session(bytea, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.dashboard_authorize(bytea, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.dashboard_authorize_conversation(bytea, text, bigint, bigint, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.dashboard_take_conversation(bytea, bigint, bigint, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.dashboard_logout(bytea, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.dashboard_cookie_key() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.create_user(bigint, text, text, text, timestamptz) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.dashboard_users(bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.set_user_role(bigint, bigint, text) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.disable_user(bigint, bigint, timestamptz) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.invite_user(bigint, text, text, bytea, timestamptz) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.invitation(bytea, timestamptz) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.accept_invitation(bytea, text, timestamptz) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.dashboard_login_users(text, bigint, timestamptz) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.dashboard_login_failed(text, bigint, timestamptz) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.dashboard_login(bigint, bytea, timestamptz) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.dashboard_session(bytea, timestamptz) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.dashboard_authorize(bytea, text, timestamptz) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.dashboard_authorize_conversation(bytea, text, bigint, bigint, timestamptz) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.dashboard_take_conversation(bytea, bigint, bigint, timestamptz) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.dashboard_logout(bytea, timestamptz) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.dashboard_cookie_key() TO pgwa_api;
