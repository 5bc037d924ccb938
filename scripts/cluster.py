#!/usr/bin/env python3
"""``scripts/cluster.py up|down|status --replicas N --bundle B``: a local multi-replica cluster
(PostgreSQL, N gsv-serve replicas, nginx in front) of ordinary processes; see server/cluster.py."""
from server.cluster import main

if __name__ == "__main__":
    raise SystemExit(main())
