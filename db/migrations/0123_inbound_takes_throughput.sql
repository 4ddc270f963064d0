-- Meta counts a number's inbound messages toward its throughput as well as its sends
-- (reference: throughput "counts inbound and outbound"). Each webhook batch that stores
-- inbound messages leaves one row here per number it touched; api.claim_sends takes the
-- rows of a number it paces and moves that number's schedule on by their share of a
-- second at its pace (db/functions/sending.sql). Insert-only for the webhook batches and
-- deleted only by the claim that holds the number, so neither waits for the other.
-- Unlogged: after a crash the pace forgets at most a second of inbound traffic.
CREATE UNLOGGED TABLE core.number_inbound (
    number_id bigint NOT NULL,
    messages integer NOT NULL CHECK (messages > 0)
);
CREATE INDEX number_inbound_number ON core.number_inbound (number_id);
COMMENT ON TABLE core.number_inbound IS
    'Inbound messages not yet counted in their number''s pace: one row per webhook batch and number, taken by api.claim_sends.';
