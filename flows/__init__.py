"""Prefect flows: thin wrappers that call the tested functions of ``storage`` and ``daug_core``.

Importing this package sets the offline/quiet defaults of ../shared/ENVIRONMENT.md for any
variable the caller has not set, before Prefect or Ray read them.
"""

import os

for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS": "2",
    "RAY_USAGE_STATS_ENABLED": "0",
}.items():
    os.environ.setdefault(_name, _value)
