#!/usr/bin/env bash
# Print the schema of pgwa's own objects (schemas core and api) as pg_dump sees them,
# with comments, SET lines, pg_dump's random \\restrict keys and blank runs stripped, so db/schema.sql diffs cleanly.
# Usage: dump_schema.sh [DATABASE_URL]   (default: the project database)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
URL=${1:-$("$ROOT/scripts/db.sh" url)}
PG_DUMP=/usr/lib/postgresql/15/bin/pg_dump
[ -x "$PG_DUMP" ] || PG_DUMP=pg_dump
# pg_partman's dated partitions (core.status_events_p2026_12_02, ...) are made by the
# clock, not by the migrations: left out, so that the dump is the same any day.
"$PG_DUMP" --schema-only --no-owner --no-privileges -n core -n api \
    -T 'core.*_p[0-9][0-9][0-9][0-9]_[0-9][0-9]_[0-9][0-9]' "$URL" \
    | sed -e '/^--/d' -e '/^SET /d' -e '/^SELECT pg_catalog.set_config/d' \
          -e '/^\\restrict /d' -e '/^\\unrestrict /d' \
    | cat -s
