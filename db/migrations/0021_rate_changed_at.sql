-- When the number's AIMD rate last moved: growth is paced per second, not per report.
ALTER TABLE core.wa_numbers ADD COLUMN rate_changed_at timestamptz;
