-- The dashboard's inbox for support agents (tables: 0110_dashboard_inbox; the pages:
-- api/dashboard/inbox.py). Every call names the tenant and the dashboard user, which the
-- page resolves from its session in the same statement (api.dashboard_actor):
--
--   SELECT … FROM api.dashboard_actor(<hash>, 'inbox.reply', <number>, <contact>) a,
--                 api.add_conversation_note(a.tenant_id, a.user_id, …)
--
-- Who sees what: an agent sees (lists, reads, answers, notes) the conversations assigned
-- to them and the unassigned queue, never a colleague's (PW403 from
-- api.dashboard_authorize_conversation; absent from api.inbox_conversations); admins,
-- marketers and viewers see every conversation of the tenant. Another tenant's ids are
-- not found (PW202/PW204/PW209). Unread counts are per user: the messages after the
-- user's own read mark. Written in PL/pgSQL: this file is applied before inbox.sql and
-- users.sql, whose functions it calls.

-------------------------------------------------------------------------------
-- Who is asking
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION api.dashboard_actor(p_token_hash bytea, p_action text, p_number_id bigint DEFAULT NULL,
                                               p_contact_id bigint DEFAULT NULL, p_now timestamptz DEFAULT now())
RETURNS api.dashboard_actor
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_tenant_id bigint;
    v_user core.dashboard_users;
BEGIN
    IF p_number_id IS NOT NULL AND p_contact_id IS NOT NULL THEN
        v_tenant_id := api.dashboard_authorize_conversation(p_token_hash, p_action, p_number_id, p_contact_id, p_now);
    ELSE
        v_tenant_id := api.dashboard_authorize(p_token_hash, p_action, p_now);
    END IF;
    v_user := core.dashboard_session_user(p_token_hash, p_now);
    RETURN ROW(v_tenant_id, v_user.user_id, v_user.email, v_user.role)::api.dashboard_actor;
END
$$;
COMMENT ON FUNCTION api.dashboard_actor(bytea, text, bigint, bigint, timestamptz) IS
    'The tenant, user, e-mail and role of the live session whose token has sha256 p_token_hash, once its role holds p_action (and, given a conversation, once an agent is not refused it for being another agent''s). Raises PW401 for no live session, PW403 when the role lacks the action or the conversation is another agent''s.';

-- The tenant's enabled user, or PW260.
CREATE OR REPLACE FUNCTION core.inbox_user(p_tenant_id bigint, p_user_id bigint) RETURNS core.dashboard_users
LANGUAGE plpgsql STABLE SET search_path = '' AS $$
DECLARE
    v_user core.dashboard_users;
BEGIN
    SELECT * INTO v_user FROM core.dashboard_users u
    WHERE u.user_id = p_user_id AND u.tenant_id = p_tenant_id AND u.disabled_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % not found', p_user_id USING ERRCODE = 'PW260',
            HINT = 'List the tenant''s users with api.dashboard_users().';
    END IF;
    RETURN v_user;
END
$$;

-------------------------------------------------------------------------------
-- The list
-------------------------------------------------------------------------------

-- The conversations of a number as one user sees them: their own unread counts, an
-- agent's restricted to theirs and the unassigned queue, filtered and searched. The
-- search pattern is matched with ILIKE as a value (its % and _ escaped by the caller),
-- through the trigram indexes on contacts and inbox messages.
CREATE OR REPLACE FUNCTION core.inbox_rows(p_tenant_id bigint, p_user core.dashboard_users, p_number_id bigint,
                                           p_contact_id bigint, p_filter text, p_pattern text, p_limit integer,
                                           p_now timestamptz)
RETURNS SETOF api.conversation_summary
LANGUAGE plpgsql STABLE SET search_path = '' AS $$
BEGIN
    RETURN QUERY
    SELECT c.contact_id, c.wa_id, c.user_id, c.name, c.profile_name, c.opted_out,
           l.message_id, l.direction, l.type, l.body, v.last_message_at, n.unread::integer,
           core.window_open(v.last_inbound_at, p_now), core.window_closes_at(v.last_inbound_at),
           v.assigned_to, v.assigned_at, v.needs_human, v.needs_human_reason
    FROM core.conversations v
    JOIN core.contacts c ON c.contact_id = v.contact_id AND c.tenant_id = p_tenant_id
    LEFT JOIN core.conversation_reads r
        ON r.user_id = p_user.user_id AND r.number_id = v.number_id AND r.contact_id = v.contact_id
    LEFT JOIN LATERAL (
        SELECT i.message_id, i.direction, i.type, i.body FROM core.inbox_messages i
        WHERE i.number_id = v.number_id AND i.contact_id = v.contact_id
        ORDER BY i.created_at DESC, i.message_id DESC
        LIMIT 1
    ) l ON true
    -- Unread for this user: inbound messages after their mark, counted up to 100.
    CROSS JOIN LATERAL (
        SELECT count(*) AS unread FROM (
            SELECT 1 FROM core.inbox_messages i
            WHERE i.number_id = v.number_id AND i.contact_id = v.contact_id AND i.direction = 'in'
              AND (i.created_at, i.message_id) > (coalesce(r.read_up_to_at, '-infinity'), coalesce(r.read_up_to_id, 0))
            LIMIT 100) x
    ) n
    WHERE v.number_id = p_number_id
      AND (p_contact_id IS NULL OR v.contact_id = p_contact_id)
      AND (p_user.role <> 'agent' OR v.assigned_to IS NULL OR v.assigned_to = p_user.email)
      AND CASE p_filter
              WHEN 'mine' THEN v.assigned_to = p_user.email
              WHEN 'unassigned' THEN v.assigned_to IS NULL
              WHEN 'needs_human' THEN v.needs_human
              WHEN 'unread' THEN n.unread > 0
              ELSE true END
      AND (p_pattern IS NULL
           OR v.contact_id IN (SELECT k.contact_id FROM core.contacts k
                               WHERE k.tenant_id = p_tenant_id
                                 AND (coalesce(k.wa_id, '') || ' ' || coalesce(k.name, '') || ' '
                                      || coalesce(k.profile_name, '')) ILIKE p_pattern)
           OR v.contact_id IN (SELECT i.contact_id FROM core.inbox_messages i
                               WHERE i.number_id = p_number_id AND i.body ILIKE p_pattern))
    ORDER BY v.last_message_at DESC, v.contact_id DESC
    LIMIT p_limit;
END
$$;

CREATE OR REPLACE FUNCTION api.inbox_conversations(p_tenant_id bigint, p_user_id bigint, p_number_id bigint,
                                                   p_filter text DEFAULT 'all', p_search text DEFAULT NULL,
                                                   p_limit integer DEFAULT 50, p_now timestamptz DEFAULT now())
RETURNS SETOF api.conversation_summary
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
DECLARE
    v_user core.dashboard_users := core.inbox_user(p_tenant_id, p_user_id);
    v_search text := nullif(btrim(coalesce(p_search, '')), '');
BEGIN
    PERFORM core.number_for(p_tenant_id, p_number_id);
    IF p_filter IS NULL OR p_filter NOT IN ('all', 'mine', 'unassigned', 'needs_human', 'unread') THEN
        RAISE EXCEPTION 'filter must be all, mine, unassigned, needs_human or unread, not "%"', left(p_filter, 40)
            USING ERRCODE = 'PW167', HINT = 'mine: assigned to you; an agent''s "all" is theirs and the unassigned queue.';
    END IF;
    IF length(v_search) > 100 THEN
        RAISE EXCEPTION 'search is % characters; at most 100', length(v_search)
            USING ERRCODE = 'PW167', HINT = 'Search a phone number, a name or words of a message.';
    END IF;
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 500 THEN
        RAISE EXCEPTION 'limit % is out of range', p_limit USING ERRCODE = 'PW100', HINT = 'Ask for 1 to 500 conversations.';
    END IF;
    RETURN QUERY SELECT * FROM core.inbox_rows(p_tenant_id, v_user, p_number_id, NULL, p_filter,
        '%' || replace(replace(replace(v_search, '\', '\\'), '%', '\%'), '_', '\_') || '%', p_limit, p_now);
END
$$;
COMMENT ON FUNCTION api.inbox_conversations(bigint, bigint, bigint, text, text, integer, timestamptz) IS
    'A number''s conversations as one dashboard user sees them, latest first (as api.conversations, but unread counts the inbound messages after that user''s own read mark, up to 100): p_filter all, mine (assigned to the user), unassigned, needs_human (a bot or the LLM handed over) or unread; p_search a substring of the contact''s phone, name or profile name or of a message''s text. An agent sees only the conversations assigned to them and the unassigned queue. Raises PW167 for a bad filter or a search over 100 characters, PW100 for a limit outside 1..500, PW260 for a user not the tenant''s, PW202 for a number not the tenant''s.';

CREATE OR REPLACE FUNCTION api.inbox_conversation(p_tenant_id bigint, p_user_id bigint, p_number_id bigint,
                                                  p_contact_id bigint, p_now timestamptz DEFAULT now())
RETURNS api.conversation_summary
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
DECLARE
    v_user core.dashboard_users := core.inbox_user(p_tenant_id, p_user_id);
    v_row api.conversation_summary;
BEGIN
    PERFORM core.number_for(p_tenant_id, p_number_id);
    SELECT * INTO v_row FROM core.inbox_rows(p_tenant_id, v_user, p_number_id, p_contact_id, 'all', NULL, 1, p_now);
    IF v_row.contact_id IS NULL THEN
        RAISE EXCEPTION 'no conversation between number % and contact % for this user', p_number_id, p_contact_id
            USING ERRCODE = 'PW209', HINT = 'List the number''s conversations with api.inbox_conversations().';
    END IF;
    RETURN v_row;
END
$$;
COMMENT ON FUNCTION api.inbox_conversation(bigint, bigint, bigint, bigint, timestamptz) IS
    'One conversation as api.inbox_conversations shows it to the user (the thread''s header: window, assignment, hand-over, unread). Raises PW209 when there is no such conversation of the tenant, or it is another agent''s and the user an agent; PW202 for a number not the tenant''s, PW260 for a user not the tenant''s.';

CREATE OR REPLACE FUNCTION api.mark_conversation_read(p_tenant_id bigint, p_user_id bigint, p_number_id bigint,
                                                      p_contact_id bigint, p_now timestamptz DEFAULT now())
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_user core.dashboard_users := core.inbox_user(p_tenant_id, p_user_id);
    v_before integer;
BEGIN
    PERFORM core.conversation_for(p_tenant_id, p_number_id, p_contact_id);
    SELECT s.unread INTO v_before FROM core.inbox_rows(p_tenant_id, v_user, p_number_id, p_contact_id, 'all', NULL, 1, p_now) s;
    -- Up to the newest message; a mark never moves back (two tabs, out of order).
    INSERT INTO core.conversation_reads AS r (user_id, number_id, contact_id, read_up_to_at, read_up_to_id, read_at)
    SELECT v_user.user_id, i.number_id, i.contact_id, i.created_at, i.message_id, p_now
    FROM core.inbox_messages i
    WHERE i.number_id = p_number_id AND i.contact_id = p_contact_id
    ORDER BY i.created_at DESC, i.message_id DESC
    LIMIT 1
    ON CONFLICT (user_id, number_id, contact_id) DO UPDATE SET
        read_up_to_at = excluded.read_up_to_at, read_up_to_id = excluded.read_up_to_id, read_at = excluded.read_at
    WHERE (r.read_up_to_at, r.read_up_to_id) < (excluded.read_up_to_at, excluded.read_up_to_id);
    RETURN coalesce(v_before, 0);
END
$$;
COMMENT ON FUNCTION api.mark_conversation_read(bigint, bigint, bigint, bigint, timestamptz) IS
    'Moves one dashboard user''s read mark on a conversation to its newest message (never back): their unread count drops to zero, other users'' stay. Meta''s read receipt is api.mark_read''s. Returns how many inbound messages were unread for the user. Raises PW260 for a user not the tenant''s, PW202/PW209 for a number or conversation not the tenant''s.';

-------------------------------------------------------------------------------
-- The thread: notes, hand-over, assignment
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION api.add_conversation_note(p_tenant_id bigint, p_user_id bigint, p_number_id bigint,
                                                     p_contact_id bigint, p_body text, p_now timestamptz DEFAULT now())
RETURNS api.conversation_note
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_user core.dashboard_users := core.inbox_user(p_tenant_id, p_user_id);
    v_note api.conversation_note;
BEGIN
    IF length(btrim(coalesce(p_body, ''))) NOT BETWEEN 1 AND core.text_body_max() THEN
        RAISE EXCEPTION 'note must be 1 to % characters, not %', core.text_body_max(), length(btrim(coalesce(p_body, '')))
            USING ERRCODE = 'PW165', HINT = 'Write the note (it stays inside the dashboard; the contact never sees it).';
    END IF;
    PERFORM core.conversation_for(p_tenant_id, p_number_id, p_contact_id);
    INSERT INTO core.conversation_notes (number_id, contact_id, user_id, author, body, created_at)
    VALUES (p_number_id, p_contact_id, v_user.user_id, v_user.email, btrim(p_body), p_now)
    RETURNING note_id, number_id, contact_id, author, body, created_at INTO v_note;
    RETURN v_note;
END
$$;
COMMENT ON FUNCTION api.add_conversation_note(bigint, bigint, bigint, bigint, text, timestamptz) IS
    'Adds an internal note by a dashboard user to a conversation: shown in the thread, never sent to WhatsApp. Returns the note. Raises PW165 for an empty note or one over 4,096 characters, PW260 for a user not the tenant''s, PW202/PW209 for a number or conversation not the tenant''s.';

CREATE OR REPLACE FUNCTION api.conversation_notes(p_tenant_id bigint, p_number_id bigint, p_contact_id bigint)
RETURNS SETOF api.conversation_note
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
BEGIN
    PERFORM core.number_for(p_tenant_id, p_number_id);
    PERFORM core.contact_for(p_tenant_id, p_contact_id);
    RETURN QUERY
    SELECT x.* FROM (
        SELECT n.note_id, n.number_id, n.contact_id, n.author, n.body, n.created_at FROM core.conversation_notes n
        WHERE n.number_id = p_number_id AND n.contact_id = p_contact_id
        ORDER BY n.created_at DESC, n.note_id DESC
        LIMIT 500) x
    ORDER BY x.created_at, x.note_id;
END
$$;
COMMENT ON FUNCTION api.conversation_notes(bigint, bigint, bigint) IS
    'A conversation''s internal notes, oldest first (the latest 500 at most): author e-mail, text, time. Raises PW202/PW204 for a number or contact not the tenant''s.';

CREATE OR REPLACE FUNCTION api.clear_needs_human(p_tenant_id bigint, p_number_id bigint, p_contact_id bigint)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_conversation core.conversations := core.conversation_for(p_tenant_id, p_number_id, p_contact_id);
BEGIN
    UPDATE core.conversations SET needs_human = false, needs_human_reason = NULL, needs_human_at = NULL
    WHERE number_id = p_number_id AND contact_id = p_contact_id AND needs_human;
    RETURN v_conversation.needs_human;
END
$$;
COMMENT ON FUNCTION api.clear_needs_human(bigint, bigint, bigint) IS
    'Clears a conversation''s call for a human (set when a bot rule or the LLM handed it over) without assigning it. Returns whether the flag was set. Raises PW202/PW209 for a number or conversation not the tenant''s.';

CREATE OR REPLACE FUNCTION api.assign_conversation_to_user(p_tenant_id bigint, p_number_id bigint, p_contact_id bigint,
                                                           p_user_id bigint)
RETURNS api.conversation_summary
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_email text;
BEGIN
    SELECT u.email INTO v_email FROM core.dashboard_users u
    WHERE u.user_id = p_user_id AND u.tenant_id = p_tenant_id AND u.disabled_at IS NULL
      AND EXISTS (SELECT 1 FROM core.dashboard_role_actions a WHERE a.role = u.role AND a.action = 'inbox.reply');
    IF v_email IS NULL THEN
        RAISE EXCEPTION 'user % is not an enabled user of this tenant who may answer conversations', p_user_id
            USING ERRCODE = 'PW276', HINT = 'Pick an agent or an admin from api.inbox_assignees().';
    END IF;
    RETURN api.assign_conversation(p_tenant_id, p_number_id, p_contact_id, v_email);
END
$$;
COMMENT ON FUNCTION api.assign_conversation_to_user(bigint, bigint, bigint, bigint) IS
    'Assigns a conversation to one of the tenant''s dashboard users who may answer (an agent or an admin), as api.assign_conversation with their e-mail. Returns the conversation. Raises PW276 for a user not the tenant''s, disabled, or without inbox.reply, PW202/PW209 for a number or conversation not the tenant''s.';

CREATE OR REPLACE FUNCTION api.inbox_assignees(p_tenant_id bigint) RETURNS SETOF api.dashboard_user
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
BEGIN
    RETURN QUERY
    SELECT (core.dashboard_user_row(u)).* FROM core.dashboard_users u
    WHERE u.tenant_id = p_tenant_id AND u.disabled_at IS NULL
      AND EXISTS (SELECT 1 FROM core.dashboard_role_actions a WHERE a.role = u.role AND a.action = 'inbox.reply')
    ORDER BY u.email;
END
$$;
COMMENT ON FUNCTION api.inbox_assignees(bigint) IS
    'The tenant''s enabled dashboard users a conversation can be assigned to (roles holding inbox.reply: agents and admins), by e-mail.';

-- A file is served in the conversation it shows in (api/dashboard/inbox.py's
-- /dashboard/inbox/{number}/{contact}/media/{media}): an inbound message's, or one sent by
-- its Meta id in a reply of that conversation (as core.message_media finds it). So an
-- agent reads the files of their own and unassigned conversations only, as everything
-- else of the inbox: an upload has no conversation of its own, and a colleague's reply is
-- not in any conversation the agent may open. Reads one conversation's messages
-- (inbox_messages_conversation).
CREATE OR REPLACE FUNCTION api.inbox_media_content(p_tenant_id bigint, p_user_id bigint, p_number_id bigint,
                                                   p_contact_id bigint, p_media_id bigint)
RETURNS api.media_content
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
DECLARE
    v_user core.dashboard_users := core.inbox_user(p_tenant_id, p_user_id);
BEGIN
    PERFORM 1
    FROM core.media m
    JOIN core.conversations v ON v.number_id = p_number_id AND v.contact_id = p_contact_id
    JOIN core.contacts c ON c.contact_id = v.contact_id AND c.tenant_id = p_tenant_id
    WHERE m.media_id = p_media_id AND m.tenant_id = p_tenant_id AND m.number_id = p_number_id
      AND (v_user.role <> 'agent' OR v.assigned_to IS NULL OR v.assigned_to = v_user.email)
      AND EXISTS (SELECT 1 FROM core.inbox_messages i
                  WHERE i.number_id = p_number_id AND i.contact_id = p_contact_id
                    AND (i.message_id = m.message_id
                         OR (m.direction = 'out' AND i.direction = 'out'
                             AND i.payload -> i.type ->> 'id' = m.meta_media_id)));
    IF NOT FOUND THEN
        RAISE EXCEPTION 'media % not found in this conversation', p_media_id
            USING ERRCODE = 'PW245',
                  HINT = 'A file is served in the conversation that shows it; agents see their own conversations and the unassigned queue.';
    END IF;
    RETURN api.media_content(p_tenant_id, p_media_id);
END
$$;
COMMENT ON FUNCTION api.inbox_media_content(bigint, bigint, bigint, bigint, bigint) IS
    'As api.media_content, for a dashboard user in one conversation: the file of one of its inbound messages, or one sent by its Meta id in one of its replies; an agent only in a conversation assigned to them or unassigned. Raises PW245 (not found) when the media is not the tenant''s, not in that conversation, or the conversation is another agent''s; PW301 when no file is stored; PW260 for a user not the tenant''s.';

-------------------------------------------------------------------------------
-- Replying: templates a reply can send, canned replies
-------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION api.reply_templates(p_tenant_id bigint, p_number_id bigint)
RETURNS SETOF api.reply_template
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
DECLARE
    v_number core.wa_numbers := core.number_for(p_tenant_id, p_number_id);
BEGIN
    RETURN QUERY
    SELECT t.template_id, t.name, t.language, t.parameter_format,
           ARRAY(SELECT coalesce(s.parameter_name, s.index::text)
                 FROM core.template_slots(t.components, t.parameter_format) s
                 WHERE s.component = 'body' ORDER BY s.index),
           (SELECT c->>'text' FROM jsonb_array_elements(t.components) c WHERE upper(c->>'type') = 'BODY' LIMIT 1)
    FROM core.templates t
    WHERE t.tenant_id = p_tenant_id AND t.waba_id = v_number.waba_id AND t.status = 'APPROVED'
      AND NOT EXISTS (SELECT 1 FROM core.template_slots(t.components, t.parameter_format) s
                      WHERE s.component <> 'body' AND s.required)
    ORDER BY t.name, t.language;
END
$$;
COMMENT ON FUNCTION api.reply_templates(bigint, bigint) IS
    'The approved templates of the number''s WABA that a reply can send (body parameters only, api.reply''s rule), each with its parameter format, its body parameters in order (names, or positions 1, 2, …) and its body text. Raises PW202 for a number not the tenant''s.';

CREATE OR REPLACE FUNCTION api.canned_replies(p_tenant_id bigint) RETURNS SETOF api.canned_reply
LANGUAGE plpgsql SECURITY DEFINER STABLE SET search_path = '' AS $$
BEGIN
    RETURN QUERY
    SELECT r.canned_reply_id, r.title, r.body, r.created_at FROM core.canned_replies r
    WHERE r.tenant_id = p_tenant_id ORDER BY r.title;
END
$$;
COMMENT ON FUNCTION api.canned_replies(bigint) IS
    'The tenant''s canned replies by title: saved answers an agent picks to fill the reply box.';

CREATE OR REPLACE FUNCTION api.create_canned_reply(p_tenant_id bigint, p_user_id bigint, p_title text, p_body text)
RETURNS api.canned_reply
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_row api.canned_reply;
BEGIN
    IF length(btrim(coalesce(p_title, ''))) NOT BETWEEN 1 AND 100 OR length(btrim(coalesce(p_body, ''))) NOT BETWEEN 1 AND core.text_body_max() THEN
        RAISE EXCEPTION 'a canned reply needs a title of 1 to 100 characters and a body of 1 to % characters', core.text_body_max()
            USING ERRCODE = 'PW166', HINT = 'Give both; the body may use contact variables like {{name}}.';
    END IF;
    IF p_user_id IS NOT NULL THEN
        PERFORM core.inbox_user(p_tenant_id, p_user_id);
    END IF;
    INSERT INTO core.canned_replies (tenant_id, title, body, created_by)
    VALUES (p_tenant_id, btrim(p_title), btrim(p_body), p_user_id)
    ON CONFLICT ON CONSTRAINT canned_replies_tenant_title DO NOTHING
    RETURNING canned_reply_id, title, body, created_at INTO v_row;
    IF v_row.canned_reply_id IS NULL THEN
        RAISE EXCEPTION 'a canned reply titled "%" already exists', btrim(p_title)
            USING ERRCODE = 'PW375', HINT = 'Choose another title, or delete the old reply first.';
    END IF;
    RETURN v_row;
END
$$;
COMMENT ON FUNCTION api.create_canned_reply(bigint, bigint, text, text) IS
    'Saves a canned reply for the tenant (p_user_id: its author, or null). Returns it. Raises PW166 for a missing or too long title or body, PW375 when the title is taken, PW260 for a user not the tenant''s.';

CREATE OR REPLACE FUNCTION api.delete_canned_reply(p_tenant_id bigint, p_canned_reply_id bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
BEGIN
    DELETE FROM core.canned_replies WHERE canned_reply_id = p_canned_reply_id AND tenant_id = p_tenant_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'canned reply % not found', p_canned_reply_id USING ERRCODE = 'PW275',
            HINT = 'List the tenant''s canned replies with api.canned_replies().';
    END IF;
    RETURN p_canned_reply_id;
END
$$;
COMMENT ON FUNCTION api.delete_canned_reply(bigint, bigint) IS
    'Deletes one of the tenant''s canned replies. Returns its id. Raises PW275 when the tenant has no such reply.';

-------------------------------------------------------------------------------
-- Grants
-------------------------------------------------------------------------------

REVOKE ALL ON FUNCTION api.dashboard_actor(bytea, text, bigint, bigint, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.inbox_conversations(bigint, bigint, bigint, text, text, integer, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.inbox_conversation(bigint, bigint, bigint, bigint, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.mark_conversation_read(bigint, bigint, bigint, bigint, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.add_conversation_note(bigint, bigint, bigint, bigint, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.conversation_notes(bigint, bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.clear_needs_human(bigint, bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.assign_conversation_to_user(bigint, bigint, bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.inbox_assignees(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.inbox_media_content(bigint, bigint, bigint, bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.reply_templates(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.canned_replies(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.create_canned_reply(bigint, bigint, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION api.delete_canned_reply(bigint, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.dashboard_actor(bytea, text, bigint, bigint, timestamptz) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.inbox_conversations(bigint, bigint, bigint, text, text, integer, timestamptz) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.inbox_conversation(bigint, bigint, bigint, bigint, timestamptz) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.mark_conversation_read(bigint, bigint, bigint, bigint, timestamptz) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.add_conversation_note(bigint, bigint, bigint, bigint, text, timestamptz) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.conversation_notes(bigint, bigint, bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.clear_needs_human(bigint, bigint, bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.assign_conversation_to_user(bigint, bigint, bigint, bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.inbox_assignees(bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.inbox_media_content(bigint, bigint, bigint, bigint, bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.reply_templates(bigint, bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.canned_replies(bigint) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.create_canned_reply(bigint, bigint, text, text) TO pgwa_api;
GRANT EXECUTE ON FUNCTION api.delete_canned_reply(bigint, bigint) TO pgwa_api;
