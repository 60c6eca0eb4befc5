"""CLI: ``python -m tests.testbed.kubelet --kubeconfig PATH --work-dir DIR [--image-map FILE]``.

Runs until SIGTERM/SIGINT, then stops every process it started. The test bed's cluster object
starts it; it can also be run by hand against ``python -m tests.testbed up``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from ..runimages import run_images
from .api import Api, KubeConfig
from .imagemap import ImageMap
from .kubelet import Kubelet


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.testbed.kubelet", description=__doc__)
    p.add_argument("--kubeconfig", required=True, help="admin kubeconfig of the test bed")
    p.add_argument("--work-dir", required=True, type=Path, help="pods/, logs/, pvc/ go here")
    p.add_argument("--image-map", help="YAML/JSON image map file (extends the built-in map)")
    p.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="PREFIX=DIR",
        help="map an image prefix to a bin dir or module:function (repeatable)",
    )
    p.add_argument(
        "--run-image",
        action="append",
        default=None,
        metavar="IMAGE",
        help="run pods whose first container uses IMAGE even without the run label "
        "(repeatable; default: the operator and vLLM-cpu images of the test bed's operator config)",
    )
    p.add_argument("--api-url", help="API server URL (default: from the kubeconfig)")
    p.add_argument("--ca", help="CA certificate file (default: from the kubeconfig)")
    p.add_argument("--pod-cidr", default="127.10.0.0/16")
    p.add_argument("--service-cidr", default="127.20.0.0/16")
    p.add_argument(
        "--no-pod-ip-env",
        action="store_true",
        help="do not inject POD_IP; pods must define it via fieldRef status.podIP",
    )
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=10.0,
        help="max seconds to wait per pod on kubelet shutdown before SIGKILL",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


async def amain(args: argparse.Namespace) -> None:
    cfg = KubeConfig(args.kubeconfig, api_url=args.api_url, ca=args.ca)
    image_map = ImageMap.load(args.image_map, args.image)
    work_dir = args.work_dir.resolve()
    (work_dir / "logs").mkdir(parents=True, exist_ok=True)
    kubelet = Kubelet(
        Api(cfg),
        image_map,
        work_dir,
        pod_cidr=args.pod_cidr,
        service_cidr=args.service_cidr,
        inject_pod_ip=not args.no_pod_ip_env,
        shutdown_grace=args.shutdown_grace,
        run_images=args.run_image if args.run_image is not None else run_images(),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logging.getLogger(__name__).info(
        "process kubelet up: api %s, work dir %s", cfg.server, work_dir
    )
    await kubelet.run(stop)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(amain(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
