-- One reported send as api.report_sends classifies it: the report, the message's state
-- when the report came, and what happens to it next. The steps of report_sends each
-- apply one outcome to an array of these (no temp table per call).
CREATE TYPE core.send_outcome AS (
    outbound_id     bigint,
    queue_name      text,
    msg_id          bigint,
    wamid           text,           -- Meta accepted the send (also on an ignored duplicate)
    error_code      integer,
    error_message   text,
    number_id       bigint,
    campaign_id     bigint,
    campaign_status text,
    category        text,           -- core.meta_error_codes.category of error_code
    alert           boolean,        -- an operator is told (core.meta_error_codes.alert)
    backoff         text,           -- core.meta_error_codes.backoff of error_code
    outcome         text,           -- accepted, receipt, returned, paused, throttled, held, deferred,
                                    -- retried, failed, ignored (core.classify_reports)
    requeue_s       double precision, -- back in the queue after so many seconds; NULL: not requeued
    unsure          boolean           -- the request went out and its answer was lost (the worker says)
);
