-- A worker gives its numbers up before its hold ends when it stops and when Meta is out
-- of its reach (worker/sender.py, api.release_numbers): the column says so.
COMMENT ON COLUMN core.wa_numbers.sender_until IS
    'When the sender gives the number up unless it claims again: a pace horizon after the last message it was given. api.release_numbers clears it sooner, when the worker stops or cannot reach Meta.';
