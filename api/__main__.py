"""``python -m api``: serve the API on PGWA_API_HOST:PGWA_API_PORT (127.0.0.1:8780).

uvicorn with httptools and uvloop, one process: measured here, granian's ASGI mode and a
second uvicorn worker each cost more CPU per webhook than they gained.
"""

from __future__ import annotations

import os

import uvicorn


def main() -> None:
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=os.environ.get("PGWA_API_HOST", "127.0.0.1"),
        port=int(os.environ.get("PGWA_API_PORT", "8780")),
        workers=int(os.environ.get("PGWA_API_WORKERS", "1")),
        http="httptools",
        loop="uvloop",
        access_log=False,
        server_header=False,
        log_level=os.environ.get("PGWA_LOG_LEVEL", "warning").lower(),
        # Meta keeps connections open between deliveries.
        timeout_keep_alive=75,
    )


if __name__ == "__main__":
    main()
