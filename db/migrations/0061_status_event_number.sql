-- A status event belongs to the number it came through (issue 11). An event whose wamid
-- is not known yet is kept until its message is, and then it may move only a message of
-- that same number: a wamid named by another tenant's webhook never moves this one's
-- message, nor takes the (wamid, status) key of its genuine event. 0: a number pgwa does
-- not know. No foreign key: numbers are never deleted, and the hot insert stays cheap.
ALTER TABLE core.status_events ADD COLUMN number_id bigint NOT NULL DEFAULT 0;
UPDATE core.status_events e SET number_id = o.number_id
FROM core.outbound_messages o WHERE o.outbound_id = e.outbound_id;
ALTER TABLE core.status_events DROP CONSTRAINT status_events_pkey;
ALTER TABLE core.status_events ADD CONSTRAINT status_events_pkey PRIMARY KEY (wamid, status, number_id);
