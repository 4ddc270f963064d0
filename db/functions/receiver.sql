-- Exactly once when answers are lost: the receiver's heartbeat and outages, per-number
-- status watermarks, and the rule that decides when a send whose answer was lost may go
-- again (api.claim_sends, via core.take_in_flight).

-- The webhook receiver is alive: record the beat, and an outage when the previous beat is
-- more than three beats old. Returns the seconds until the next beat.
CREATE OR REPLACE FUNCTION api.receiver_heartbeat(p_now timestamptz DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, clock_timestamp());
    v_beat_s integer := (SELECT s.receiver_beat_s FROM core.settings s);
    v_last timestamptz;
BEGIN
    SELECT beat_at INTO v_last FROM core.receiver_beats FOR UPDATE;
    IF v_last IS NULL THEN
        INSERT INTO core.receiver_beats (beat_at) VALUES (v_now)
        ON CONFLICT (singleton) DO UPDATE SET beat_at = greatest(core.receiver_beats.beat_at, excluded.beat_at);
    ELSE
        IF v_now - v_last > make_interval(secs => 3 * v_beat_s) THEN
            INSERT INTO core.receiver_outages (started_at, ended_at) VALUES (v_last, v_now)
            ON CONFLICT (started_at) DO UPDATE SET ended_at = greatest(core.receiver_outages.ended_at, excluded.ended_at);
        END IF;
        UPDATE core.receiver_beats SET beat_at = greatest(beat_at, v_now);
    END IF;
    RETURN v_beat_s;
END
$$;
COMMENT ON FUNCTION api.receiver_heartbeat(timestamptz) IS
    'Called by each webhook receiver every core.settings.receiver_beat_s seconds (returned): records that Meta''s webhooks are being answered, and an outage when no receiver beat for three beats. api.claim_sends resends a message whose answer was lost only once the webhook stream has caught up past it. p_now: the time (NULL: the clock).';

-- Raise a number's status watermark to the send times of messages whose status webhook
-- was just processed (core.apply_statuses). Concurrent webhook batches must not wait for
-- each other on a number's row: a row another batch holds is skipped (that batch raises
-- it too, and a watermark a little low only makes a resend wait a little longer). The
-- rows exist from the number's registration (core.place_in_portfolio).
CREATE OR REPLACE FUNCTION core.raise_watermarks(p_outbound_ids bigint[]) RETURNS void
LANGUAGE sql SET search_path = '' AS $$
    WITH sent AS (
        SELECT o.number_id, max(o.claimed_at) AS through FROM core.outbound_messages o
        WHERE o.outbound_id = ANY (p_outbound_ids) AND o.claimed_at IS NOT NULL
        GROUP BY o.number_id
    ), free AS (
        SELECT w.number_id FROM core.status_watermarks w JOIN sent s USING (number_id)
        WHERE w.sent_through < s.through
        ORDER BY w.number_id
        FOR UPDATE OF w SKIP LOCKED
    )
    UPDATE core.status_watermarks w SET sent_through = s.through
    FROM sent s JOIN free f USING (number_id)
    WHERE w.number_id = s.number_id AND w.sent_through < s.through;
$$;

-- May a send of number p_number_id made at p_since whose answer was lost go again at
-- p_now? Yes when its status would have come by now and did not:
--   * the grace has passed (a status normally comes within core.settings.status_grace_s),
--   * and either the receiver has answered Meta all along since the send (beating now,
--     no outage since) and no webhook received before the grace ended still waits to be
--     processed,
--   * or statuses of the number's messages sent a grace later have been processed (the
--     stream, Meta's retries included, has caught up past the send);
-- and in any case once unsure_resend_after_s has passed (Meta retries for up to 7 days).
CREATE OR REPLACE FUNCTION core.resend_safe(p_number_id bigint, p_since timestamptz, p_now timestamptz)
RETURNS boolean
LANGUAGE sql STABLE SET search_path = '' AS $$
    SELECT p_now >= p_since + make_interval(secs => s.unsure_resend_after_s)
        OR (p_now >= p_since + make_interval(secs => s.status_grace_s)
            AND ((EXISTS (SELECT 1 FROM core.receiver_beats b
                          WHERE b.beat_at >= p_now - make_interval(secs => 3 * s.receiver_beat_s))
                  AND NOT EXISTS (SELECT 1 FROM core.receiver_outages g WHERE g.ended_at >= p_since)
                  AND NOT EXISTS (SELECT 1 FROM pgmq.q_webhooks q
                                  WHERE q.enqueued_at <= p_since + make_interval(secs => s.status_grace_s)))
                 OR EXISTS (SELECT 1 FROM core.status_watermarks w
                            WHERE w.number_id = p_number_id
                              AND w.sent_through >= p_since + make_interval(secs => s.status_grace_s))))
    FROM core.settings s
$$;

-- Of a number's messages just read, those whose last send lost its answer (a claim that
-- expired in flight, or a report that said so) and may not go again yet: they wait in
-- their queue another status_grace_s (at most until the bound) and are left out.
CREATE OR REPLACE FUNCTION core.hold_unsure(p_batch core.claimed[], p_number_id bigint, p_now timestamptz)
RETURNS core.claimed[]
LANGUAGE plpgsql SET search_path = '' AS $$
DECLARE
    v_held core.claimed[];
    v_waits double precision[];
BEGIN
    SELECT array_agg(b),
           -- Another grace, but no later than the bound.
           array_agg(least(s.status_grace_s,
                           greatest(1, extract(epoch FROM coalesce(o.unsure_since, o.claimed_at)
                                                          + make_interval(secs => s.unsure_resend_after_s) - p_now)))
                     ::double precision)
    INTO v_held, v_waits
    FROM unnest(p_batch) b
    JOIN core.outbound_messages o ON o.outbound_id = b.outbound_id
    CROSS JOIN core.settings s
    WHERE (o.state = 'in_flight' OR o.unsure_since IS NOT NULL)
      AND NOT core.resend_safe(p_number_id, coalesce(o.unsure_since, o.claimed_at), p_now);
    IF v_held IS NULL THEN
        RETURN p_batch;
    END IF;
    PERFORM core.delay_messages(h.queue_name, array_agg(h.msg_id), array_agg(h.wait_s), p_now)
    FROM unnest(v_held, v_waits) h(queue_name, msg_id, read_ct, outbound_id, message, wait_s)
    GROUP BY h.queue_name;
    RETURN ARRAY(SELECT b FROM unnest(p_batch) b
                 WHERE NOT EXISTS (SELECT 1 FROM unnest(v_held) h
                                   WHERE h.queue_name = b.queue_name AND h.msg_id = b.msg_id));
END
$$;

REVOKE ALL ON FUNCTION api.receiver_heartbeat(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.receiver_heartbeat(timestamptz) TO pgwa_api;
