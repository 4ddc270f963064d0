"""Print db/schema.sql: the dump of a freshly migrated scratch database (make schema)."""

from __future__ import annotations

import subprocess
import sys

from pgwa.config import ROOT
from pgwa.scratch import drop_database, fresh_database

SCRATCH = "pgwa_schema_scratch"


def main() -> int:
    try:
        url = fresh_database(SCRATCH)
        out = subprocess.run([str(ROOT / "scripts" / "dump_schema.sh"), url],
                             capture_output=True, text=True, check=True).stdout
    finally:
        drop_database(SCRATCH)
    sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
