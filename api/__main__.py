"""``python -m api``: serve the API on PGWA_API_HOST:PGWA_API_PORT (127.0.0.1:8780).

uvicorn with httptools and uvloop, one process: measured here, granian's ASGI mode and a
second uvicorn worker each cost more CPU per webhook than they gained.
"""

from __future__ import annotations

import sys

import uvicorn

from pgwa.config import settings_or_exit


def main() -> int:
    settings = settings_or_exit("api")
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=settings.api_host,
        port=settings.api_port,
        workers=settings.api_workers,
        http="httptools",
        loop="uvloop" if settings.uvloop else "asyncio",
        access_log=False,
        server_header=False,
        log_level=(settings.log_level or "warning").lower(),
        # Meta keeps connections open between deliveries.
        timeout_keep_alive=75,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
