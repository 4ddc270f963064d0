-- Sends whose answer was lost (the worker timed out or lost the connection after the
-- request went out, or died holding it) may have been accepted by Meta; the status
-- webhook that would settle them can be hours late when the receiver was down meanwhile
-- (Meta retries for up to 7 days). Such a send is resent only once the webhook stream has
-- demonstrably caught up past it (core.resend_safe), or after that bound.

-- The receiver's heartbeat (api.receiver_heartbeat, every receiver_beat_s): a gap of more
-- than three beats is an outage, during which Meta's webhooks went unanswered.
CREATE TABLE core.receiver_beats (
    singleton  boolean PRIMARY KEY DEFAULT true CONSTRAINT receiver_beats_one_row CHECK (singleton),
    beat_at    timestamptz NOT NULL
);
CREATE TABLE core.receiver_outages (
    started_at timestamptz PRIMARY KEY,    -- the last beat before the gap
    ended_at   timestamptz NOT NULL
);

-- Per number: the latest send time of a message whose status webhook has been processed.
-- Statuses of messages sent later have come through: the stream has caught up past it.
-- (Not a column of core.wa_numbers: claims lock those rows, webhook batches must not.)
CREATE TABLE core.status_watermarks (
    number_id  bigint PRIMARY KEY REFERENCES core.wa_numbers ON DELETE CASCADE,
    sent_through timestamptz NOT NULL
);
INSERT INTO core.status_watermarks (number_id, sent_through)
SELECT number_id, '-infinity' FROM core.wa_numbers;

ALTER TABLE core.settings
    ADD COLUMN receiver_beat_s integer NOT NULL DEFAULT 5
        CONSTRAINT settings_receiver_beat_s_valid CHECK (receiver_beat_s BETWEEN 1 AND 300),
    ADD COLUMN status_grace_s integer NOT NULL DEFAULT 60
        CONSTRAINT settings_status_grace_s_valid CHECK (status_grace_s BETWEEN 1 AND 86400),
    ADD COLUMN unsure_resend_after_s integer NOT NULL DEFAULT 604800
        CONSTRAINT settings_unsure_resend_after_s_valid CHECK (unsure_resend_after_s >= 60);
COMMENT ON COLUMN core.settings.receiver_beat_s IS
    'How often the webhook receiver beats (api.receiver_heartbeat); a gap of three beats is an outage.';
COMMENT ON COLUMN core.settings.status_grace_s IS
    'How long after a send its first status webhook normally arrives: a send whose answer was lost is not resent sooner.';
COMMENT ON COLUMN core.settings.unsure_resend_after_s IS
    'After this long a send whose answer was lost is resent even if the webhook stream never caught up past it (Meta retries webhooks for up to 7 days).';

-- When a send of this message went out and its answer was lost; NULL: none pending.
ALTER TABLE core.outbound_messages ADD COLUMN unsure_since timestamptz;
