"""A local stand-in for Meta's WhatsApp Cloud API: sends, errors, limits and webhooks.

Run it with ``python -m sim``; see ``sim/app.py`` for the routes and
``sim/config.py`` for the configuration keys.
"""

from .config import DEFAULT_NUMBER, DEFAULT_SETTINGS, QUIET_SETTINGS, SimConfig, load_config
from .simulator import Simulator

__all__ = ["DEFAULT_NUMBER", "DEFAULT_SETTINGS", "QUIET_SETTINGS", "SimConfig", "Simulator",
           "load_config"]
