"""``python -m tests.testbed build|up|down|status|kubeconfig`` — the test bed for humans.

Why: developers and ``make demo`` want a long-lived cluster they can point kubectl,
Helm and the operator at, outside pytest.  ``up`` starts the components detached and
records PIDs, ports and paths in ``~/.cache/tokenscale/testbed/run/state.json`` so
``down``/``status`` work from any later shell, killing only those PIDs.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

from . import build
from .cluster import Cluster, ClusterError
from .lws import LwsController
from .nodes import DEFAULT_POOLS, scale_pools

RUN_DIR = build.CACHE_ROOT / "run"
STATE_FILE = RUN_DIR / "state.json"


def _load() -> Cluster | None:
    try:
        return Cluster.from_state(json.loads(STATE_FILE.read_text()))
    except (OSError, ValueError, KeyError):
        return None


def _healthy(cluster: Cluster) -> bool:
    return bool(cluster.procs) and all(cluster.health().values())


def cmd_build(args: argparse.Namespace) -> int:
    comps = build.ALL_COMPONENTS if args.with_helm else build.DEFAULT_COMPONENTS
    res = build.ensure_binaries(comps)
    for comp, secs in res.seconds.items():
        print(f"built {comp} in {secs:.0f}s", file=sys.stderr)
    if args.lws:
        lws = build.ensure_lws()
        print(f"LWS manager: {lws.manager} ({lws.source}, {lws.seconds:.0f}s)", file=sys.stderr)
    print(res.bin_dir)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    existing = _load()
    if existing is not None:
        if _healthy(existing):
            print(f"test bed already up ({existing.api_url})", file=sys.stderr)
            print(existing.kubeconfig)
            return 0
        print("stale test bed state found; cleaning it up", file=sys.stderr)
        existing.stop()
        STATE_FILE.unlink(missing_ok=True)
    work_dir = RUN_DIR / "cluster"
    if work_dir.exists():
        shutil.rmtree(work_dir)
    pools = scale_pools(args.gpu_nodes) if args.gpu_nodes else DEFAULT_POOLS
    cluster = Cluster(
        work_dir,
        pools=pools,
        start_kubelet=not args.no_kubelet,
        keep_work_dir=True,
        state_file=STATE_FILE,
    )
    try:
        cluster.start(detached=True)
    except ClusterError as exc:
        STATE_FILE.unlink(missing_ok=True)
        print(exc, file=sys.stderr)
        print(f"logs kept in {cluster.logs_dir}", file=sys.stderr)
        return 1
    if args.lws:
        try:
            LwsController(cluster).start()
        except (build.BuildError, ClusterError, TimeoutError, subprocess.CalledProcessError) as exc:
            print(f"LWS controller failed to start: {exc}", file=sys.stderr)
            cluster.stop()
            STATE_FILE.unlink(missing_ok=True)
            return 1
    STATE_FILE.write_text(json.dumps(cluster.to_state(), indent=2))
    print(f"test bed up: {cluster.api_url}, logs in {cluster.logs_dir}", file=sys.stderr)
    print(f"  export KUBECONFIG={cluster.kubeconfig}", file=sys.stderr)
    print(cluster.kubeconfig)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    cluster = _load()
    if cluster is None:
        print("test bed is not up", file=sys.stderr)
        return 0
    cluster.keep_work_dir = args.keep
    cluster.stop()
    STATE_FILE.unlink(missing_ok=True)
    print("test bed stopped", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cluster = _load()
    if cluster is None:
        print("test bed is not up")
        return 1
    health = cluster.health()
    for name, alive in health.items():
        proc = next(p for p in cluster.procs if p.name == name)
        print(f"{name:26} {'running' if alive else 'DEAD':8} pid={proc.pid} log={proc.log_path}")
    print(f"api: {cluster.api_url}  kubeconfig: {cluster.kubeconfig}")
    if args.verbose:
        print(cluster.dump_state(lines=10))
    return 0 if all(health.values()) else 1


def cmd_kubeconfig(_args: argparse.Namespace) -> int:
    cluster = _load()
    if cluster is None:
        print("test bed is not up (run: python -m tests.testbed up)", file=sys.stderr)
        return 1
    print(Path(cluster.kubeconfig))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.testbed", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("build", help="build/reuse the cached binaries, print their dir")
    p.add_argument("--with-helm", action="store_true", help="also build helm")
    p.add_argument("--lws", action="store_true", help="also build the LeaderWorkerSet manager")
    p.set_defaults(func=cmd_build)
    p = sub.add_parser("up", help="start the test bed detached; prints the kubeconfig path")
    p.add_argument("--gpu-nodes", type=int, default=0, help="N fake GPU nodes instead of default")
    p.add_argument("--no-kubelet", action="store_true", help="do not start the process kubelet")
    p.add_argument("--lws", action="store_true", help="also run the LeaderWorkerSet controller")
    p.set_defaults(func=cmd_up)
    p = sub.add_parser("down", help="stop the test bed started by 'up'")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, etcd data)")
    p.set_defaults(func=cmd_down)
    p = sub.add_parser("status", help="component health")
    p.add_argument("-v", "--verbose", action="store_true", help="also print log tails + state")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("kubeconfig", help="print the admin kubeconfig path")
    p.set_defaults(func=cmd_kubeconfig)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
