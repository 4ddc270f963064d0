-- One home for each rule the other files share: the names of the per-campaign and
-- per-number pgmq queues, Meta's cap on a text message and its 24-hour customer-service
-- window. Every other file calls these; none spells the rule out again. (The runner
-- applies function files in name order: this one must stay ahead of bots.sql, inbox.sql
-- and metrics.sql, whose SQL functions and views are checked against it when created.)

-------------------------------------------------------------------------------
-- Queue names
-------------------------------------------------------------------------------

-- The pgmq queue of a campaign's messages, c_<campaign_id>: created by
-- api.create_campaign, read by api.claim_sends, dropped a day after the campaign ends.
CREATE OR REPLACE FUNCTION core.campaign_queue(p_campaign_id bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = '' AS $$
    SELECT 'c_' || p_campaign_id::text
$$;

-- The pgmq queue of a number's replies (bot, agent, LLM, confirmations, read receipts),
-- r_<number_id>: created when the number is registered, read before its campaigns.
CREATE OR REPLACE FUNCTION core.reply_queue(p_number_id bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = '' AS $$
    SELECT 'r_' || p_number_id::text
$$;

-- The campaign whose queue p_queue_name is, or NULL for any other queue: the inverse of
-- core.campaign_queue, which it asks rather than knowing the prefix.
CREATE OR REPLACE FUNCTION core.queue_campaign_id(p_queue_name text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = '' AS $$
    SELECT x.id FROM (SELECT substring(p_queue_name FROM '[0-9]{1,18}$')::bigint AS id) x
    WHERE core.campaign_queue(x.id) = p_queue_name
$$;

-- The number whose reply queue p_queue_name is, or NULL for any other queue: the inverse
-- of core.reply_queue.
CREATE OR REPLACE FUNCTION core.queue_number_id(p_queue_name text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = '' AS $$
    SELECT x.id FROM (SELECT substring(p_queue_name FROM '[0-9]{1,18}$')::bigint AS id) x
    WHERE core.reply_queue(x.id) = p_queue_name
$$;

-------------------------------------------------------------------------------
-- Meta's limits on a message
-------------------------------------------------------------------------------

-- The most characters the body of a text message may hold: a longer reply is refused when
-- it is saved, and cut to this when it is rendered (an LLM's answer, say).
CREATE OR REPLACE FUNCTION core.text_body_max() RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = '' AS $$
    SELECT 4096
$$;

-- Wake the workers that send for a number (they LISTEN on pgwa_send, worker/sender.py):
-- it has something to send now. Delivered at commit, once per number and transaction.
CREATE OR REPLACE FUNCTION core.wake_sender(p_number_id bigint) RETURNS void
LANGUAGE sql SET search_path = '' AS $$
    SELECT pg_catalog.pg_notify('pgwa_send', p_number_id::text)
$$;

-------------------------------------------------------------------------------
-- The customer-service window
-------------------------------------------------------------------------------

-- Meta's rule: a business may send a contact free-form messages (text, buttons: anything
-- but a template) for 24 hours after the contact's last message to it. Its length lives
-- here and nowhere else. The functions below are immutable: an interval of hours does not
-- depend on the time zone.
CREATE OR REPLACE FUNCTION core.service_window() RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = '' AS $$
    SELECT interval '24 hours'
$$;

-- When the window a contact opened by writing at p_last_inbound_at closes (NULL when the
-- contact never wrote); at that instant it is already closed.
CREATE OR REPLACE FUNCTION core.window_closes_at(p_last_inbound_at timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = '' AS $$
    SELECT p_last_inbound_at + core.service_window()
$$;

-- The window is open at p_now for a contact whose last message came after this instant:
-- a WHERE clause compares the bare column with it (last_inbound_at > core.window_start(p_now)),
-- so that an index on the column stays usable; written as a scalar subquery, it is
-- computed once per statement instead of once per row.
CREATE OR REPLACE FUNCTION core.window_start(p_now timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = '' AS $$
    SELECT p_now - core.service_window()
$$;

-- Whether the window of a contact who last wrote at p_last_inbound_at is open at p_now:
-- false once it has closed, and when the contact never wrote. (The comparison is written
-- out rather than calling core.window_start: a nested call would cost ~10 µs a row.)
CREATE OR REPLACE FUNCTION core.window_open(p_last_inbound_at timestamptz, p_now timestamptz) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = '' AS $$
    SELECT coalesce(p_last_inbound_at > p_now - core.service_window(), false)
$$;
