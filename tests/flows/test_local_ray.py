"""The Ray that daug starts for itself on one machine listens on loopback only; a cluster is
what ``--ray-address`` / ``RAY_ADDRESS`` are for."""

from __future__ import annotations

import json
import os
import subprocess
import sys

# connect_ray in a process of its own (a Ray of its own, stopped at the end), which reports
# the addresses its GCS and node were given, that a task ran, and whether the GCS port answers
# on the machine's network address.
PROBE = """
import json, socket, sys
import ray
from ray._private.services import node_ip_address_from_perspective
from flows.runtime.pool import connect_ray

assert connect_ray(None)
try:
    node = ray._private.worker.global_worker.node
    found = {"gcs": ray.get_runtime_context().gcs_address, "node": node.node_ip_address}
    found["task"] = ray.get(ray.remote(lambda: 1).remote())  # a worker joins on loopback
    found["machine"] = node_ip_address_from_perspective()
    try:
        port = int(found["gcs"].rpartition(":")[2])
        socket.create_connection((found["machine"], port), timeout=2).close()
        found["answers_on_machine"] = True
    except OSError:
        found["answers_on_machine"] = False
finally:
    ray.shutdown()
sys.stdout.write(json.dumps(found))
"""


def test_a_local_ray_binds_its_gcs_to_loopback_not_the_network_address():
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=180, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    host, _, port = found["gcs"].rpartition(":")
    assert host == "127.0.0.1" and int(port) > 0, found
    assert found["node"] == "127.0.0.1" and found["task"] == 1, found
    if found["machine"] != "127.0.0.1":  # a host with a network address
        assert not found["answers_on_machine"], found
