"""``python -m sim [--host H] [--port P] [--config FILE] [--webhook-url URL]
[--app-secret S] [--templates FILE] [--profile realistic|quiet]`` (env: SIM_HOST,
SIM_PORT, SIM_WEBHOOK_URL, SIM_APP_SECRET, SIM_PROFILE). Command-line flags win over the
environment, which wins over the file; the profile applies before the file's settings.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from .app import serve
from .config import load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim", description=__doc__.split("\n")[0])
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--config", help="JSON config file (numbers, templates, settings)")
    parser.add_argument("--webhook-url", help="where webhooks are POSTed")
    parser.add_argument("--app-secret", help="HMAC key for X-Hub-Signature-256")
    parser.add_argument("--templates", help="JSON file of templates (default sim/templates.json)")
    parser.add_argument("--profile", choices=("realistic", "quiet"),
                        help="Meta's behaviour (realistic, the default) or a quiet world "
                             "without random faults (sim/config.py)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("SIM_LOG_LEVEL", "WARNING"), stream=sys.stderr)
    try:
        config = load_config(args.config, host=args.host, port=args.port,
                             webhook_url=args.webhook_url, app_secret=args.app_secret,
                             templates_file=args.templates, profile=args.profile)
    except (OSError, ValueError, TypeError) as exc:
        print(f"sim: bad configuration: {exc}", file=sys.stderr)
        return 2
    loop_factory = None
    if os.environ.get("SIM_UVLOOP", "1") != "0":
        try:  # installed with uvicorn[standard]; roughly doubles the send rate
            import uvloop
            loop_factory = uvloop.new_event_loop
        except ImportError:
            pass
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve(config))
    except OSError as exc:
        print(f"sim: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
