"""Shared pytest fixtures: the e2e test bed (one control plane per session) and namespaces.

Why session scope: starting etcd + apiserver + controllers takes ~20 s on two cores and
building them cold takes far longer, so all e2e tests share one cluster and isolate
themselves with a fresh namespace each.  Unit tests never touch these fixtures, so they
run without Go.  Set ``TOKENSCALE_TESTBED_KEEP=1`` to keep the work dir (logs) after the run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.testbed import build
from tests.testbed.cluster import Cluster, ClusterError

_FAILED_KEY = pytest.StashKey[bool]()
_BUILD_ERROR = pytest.StashKey[str]()


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A running test bed; skipped only when Go is missing and nothing is cached."""
    if not build.go_available() and not build.is_built():
        pytest.skip("Go toolchain not found (needed once to build the test-bed binaries)")
    if request.session.stash.get(_BUILD_ERROR, ""):
        pytest.fail(request.session.stash[_BUILD_ERROR], pytrace=False)
    c = Cluster()
    try:
        c.start()
    except (ClusterError, build.BuildError) as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield c
    finally:
        if request.session.stash.get(_FAILED_KEY, False):
            # Keep evidence for the failing run in the pytest output.
            print("\n" + c.dump_state(lines=30))
            c.keep_work_dir = c.keep_work_dir or bool(os.environ.get("CI"))
            print(f"test bed work dir: {c.work_dir}")
        c.stop()


@pytest.fixture(scope="session")
def kube(cluster: Cluster) -> Iterator[client.ApiClient]:
    """kubernetes.client ApiClient authenticated as the test bed's admin."""
    api = cluster.api_client()
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def namespace(cluster: Cluster, kube: client.ApiClient) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount ready), deleted afterwards."""
    core = client.CoreV1Api(kube)
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    cluster.wait_default_sa(name)
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build missing test-bed binaries before any test starts.

    A cold build takes far longer than the per-test timeout, and pytest-timeout counts
    fixture setup, so it must not happen inside the ``cluster`` fixture.
    """
    wants_cluster = any("cluster" in getattr(i, "fixturenames", ()) for i in session.items)
    if not wants_cluster or session.config.option.collectonly:
        return
    if build.is_built() or not build.go_available():
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"test bed: building Kubernetes/etcd/KWOK into {build.bin_dir_for()} "
            "(cold build: tens of minutes; prebuild with `python -m tests.testbed build`)"
        )
    try:
        build.ensure_binaries()
    except build.BuildError as exc:
        # Reported by the cluster fixture for each e2e test; unit tests still run.
        session.stash[_BUILD_ERROR] = f"test bed build failed: {exc}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if getattr(report, "failed", False) and "cluster" in getattr(item, "fixturenames", ()):
        item.session.stash[_FAILED_KEY] = True
    return report
