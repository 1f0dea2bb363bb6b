"""Puts this checkout's root (the folder that holds ``tasks/``) on ``sys.path``, for the plugin modules that
import the ``tasks`` package (the alerts read stage results through ``tasks.contracts``; the registry page reads
the registry through ``tasks.decide.registry``).

Airflow's plugin manager imports every file in the plugins folder, in every process (api-server, scheduler,
workers), before any DAG file has run, and only the plugins folder is on ``sys.path`` then. Every layout we ship
has ``plugins/`` next to ``tasks/``: a checkout, docker-compose's mounts under /opt/airflow, a git-synced copy.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "tasks" / "__init__.py").is_file() and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
