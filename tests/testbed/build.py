"""Build (or reuse) the control-plane binaries from the Go wrapper modules in ``go/``.

Why: there is no Docker and no binary download on CI, only Go and the module proxy, so
kube-apiserver & co. are compiled from ``k8s.io/kubernetes`` through wrapper modules whose
committed go.mod/go.sum pin every dependency.  A cold build takes tens of minutes on two
cores, so the result is cached *outside the repo* under
``~/.cache/tokenscale/testbed/bin/<key>/`` where ``key`` hashes the go.mod/go.sum files and
this recipe's version: any pin change rebuilds, an unchanged tree starts in seconds.

Run ``python -m tests.testbed build [--with-helm]`` to prebuild (CI does this as a step).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("tokenscale.testbed.build")

GO_DIR = Path(__file__).resolve().parent / "go"
CACHE_ROOT = Path(
    os.environ.get("TOKENSCALE_TESTBED_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tokenscale" / "testbed"
)
# Bump when the way binaries are built changes (flags, ldflags, stage extraction).
RECIPE_VERSION = "1"

K8S_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
# Stock KWOK stages copied next to the binary (see nodes.write_kwok_config).
KWOK_STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
)
DEFAULT_COMPONENTS = ("k8s", "etcd", "kwok")
# LeaderWorkerSet manager: built on demand (tests/testbed/lws.py), cached apart from the
# control-plane binaries because it comes from a different source (see ensure_lws).
LWS_MODULE = "sigs.k8s.io/lws"
LWS_VERSION = "v0.9.0"
LWS_RECIPE = "1"
ALL_COMPONENTS = (*DEFAULT_COMPONENTS, "helm")


class BuildError(RuntimeError):
    """A Go build failed; the message carries the tail of its output."""


@dataclass(frozen=True)
class BuildResult:
    """Where the binaries are and how long the (possibly no-op) build took."""

    bin_dir: Path
    key: str
    seconds: dict[str, float]

    def path(self, name: str) -> Path:
        return self.bin_dir / name


def go_available() -> bool:
    return shutil.which("go") is not None


def cache_key() -> str:
    """Hash of every wrapper module's go.mod + go.sum and the recipe version."""
    h = hashlib.sha256(f"recipe={RECIPE_VERSION}\n".encode())
    for f in sorted(GO_DIR.glob("*/go.*")):
        if f.name in ("go.mod", "go.sum"):
            h.update(f"{f.parent.name}/{f.name}\n".encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def bin_dir_for(key: str | None = None) -> Path:
    return CACHE_ROOT / "bin" / (key or cache_key())


def module_version(component: str, module: str) -> str:
    """Version of ``module`` pinned in ``go/<component>/go.mod`` (replace wins)."""
    text = (GO_DIR / component / "go.mod").read_text()
    repl = re.search(rf"^\s*(?:replace\s+)?{re.escape(module)} => \S+ (v\S+)", text, re.M)
    if repl:
        return repl.group(1)
    req = re.search(rf"^\s*(?:require\s+)?{re.escape(module)} (v[^\s/]+)", text, re.M)
    if not req:
        raise BuildError(f"{module} not found in go/{component}/go.mod")
    return req.group(1)


def _k8s_ldflags() -> str:
    v = module_version("k8s", "k8s.io/kubernetes")
    major, minor = v.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    # Same variables upstream's hack/lib/version.sh sets; without them --version and
    # /version report v0.0.0-master, which breaks Helm kubeVersion checks and skew logic.
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={v}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return " ".join(flags)


def _helm_ldflags() -> str:
    v = module_version("helm", "helm.sh/helm/v3")
    cg = module_version("helm", "k8s.io/client-go").lstrip("v").split(".")
    k8s_major, k8s_minor = str(int(cg[0]) + 1), cg[1]
    flags = ["-s", "-w", f"-X helm.sh/helm/v3/internal/version.version={v}"]
    flags += ["-X helm.sh/helm/v3/internal/version.gitTreeState=clean"]
    for pkg in ("helm.sh/helm/v3/pkg/lint/rules", "helm.sh/helm/v3/pkg/chartutil"):
        flags += [f"-X {pkg}.k8sVersionMajor={k8s_major}", f"-X {pkg}.k8sVersionMinor={k8s_minor}"]
    return " ".join(flags)


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(GOTOOLCHAIN="local", CGO_ENABLED="0", GOWORK="off")
    return env


def _run_go(
    args: list[str], cwd: Path, log_path: Path, *, env: dict[str, str] | None = None
) -> str:
    with log_path.open("ab") as out:
        out.write(f"\n$ (cd {cwd}) go {' '.join(args)}\n".encode())
        out.flush()
        proc = subprocess.run(
            ["go", *args],
            cwd=cwd,
            env={**_go_env(), **(env or {})},
            stdout=subprocess.PIPE,
            stderr=out,
            check=False,
        )
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-30:]
        raise BuildError(f"go {' '.join(args[:2])} failed in {cwd}:\n" + "\n".join(tail))
    return proc.stdout.decode()


def _build_component(component: str, out_dir: Path, log_path: Path) -> None:
    cwd = GO_DIR / component
    base = ["build", "-trimpath"]
    if component == "k8s":
        pkgs = [f"k8s.io/kubernetes/cmd/{b}" for b in K8S_BINARIES]
        # One invocation so the four binaries share compilation of their common packages.
        _run_go([*base, "-ldflags", _k8s_ldflags(), "-o", f"{out_dir}/", *pkgs], cwd, log_path)
    elif component == "etcd":
        # Default output name would be "server".
        args = [
            *base,
            "-ldflags",
            "-s -w",
            "-o",
            str(out_dir / "etcd"),
            "go.etcd.io/etcd/server/v3",
        ]
        _run_go(args, cwd, log_path)
    elif component == "kwok":
        args = [
            *base,
            "-ldflags",
            "-s -w",
            "-o",
            str(out_dir / "kwok"),
            "sigs.k8s.io/kwok/cmd/kwok",
        ]
        _run_go(args, cwd, log_path)
        _extract_kwok_stages(out_dir, log_path)
    elif component == "helm":
        args = [*base, "-ldflags", _helm_ldflags(), "-o", str(out_dir / "helm")]
        _run_go([*args, "helm.sh/helm/v3/cmd/helm"], cwd, log_path)
    else:
        raise BuildError(f"unknown component {component!r}")


def _extract_kwok_stages(out_dir: Path, log_path: Path) -> None:
    """Copy KWOK's stock Stage YAMLs from the module cache next to the binary.

    They are ``go:embed``ded in the module zip, so they come from the same pinned version;
    keeping a copy in the bin cache lets a warm start run without touching Go at all.
    """
    mod_dir = Path(
        _run_go(
            ["list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/kwok"], GO_DIR / "kwok", log_path
        ).strip()
    )
    dest = out_dir / "kwok-stages"
    for rel in KWOK_STAGES:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mod_dir / "kustomize" / "stage" / rel, target)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _stamp(bin_dir: Path, component: str) -> Path:
    return bin_dir / f".{component}.ok"


def is_built(components: Iterable[str] = DEFAULT_COMPONENTS, key: str | None = None) -> bool:
    bin_dir = bin_dir_for(key)
    return all(_stamp(bin_dir, c).exists() for c in components)


def ensure_binaries(components: Iterable[str] = DEFAULT_COMPONENTS) -> BuildResult:
    """Return the cache dir holding ``components``, building what is missing."""
    key = cache_key()
    bin_dir = bin_dir_for(key)
    seconds: dict[str, float] = {}
    wanted = list(dict.fromkeys(components))
    if all(_stamp(bin_dir, c).exists() for c in wanted):  # warm: no lock, no Go needed
        _check_versions(bin_dir, wanted)
        return BuildResult(bin_dir=bin_dir, key=key, seconds={})
    with _lock(CACHE_ROOT / "bin" / f".{key}.lock"):
        missing = [c for c in wanted if not _stamp(bin_dir, c).exists()]
        if missing and not go_available():
            raise BuildError(f"Go toolchain not found and {missing} not cached in {bin_dir}")
        bin_dir.mkdir(parents=True, exist_ok=True)
        log_path = bin_dir / "build.log"
        for component in missing:
            log.info("building %s into %s (cold builds take minutes)", component, bin_dir)
            started = time.monotonic()
            with tempfile.TemporaryDirectory(dir=bin_dir, prefix=f".tmp-{component}-") as tmp:
                tmp_dir = Path(tmp)
                _build_component(component, tmp_dir, log_path)
                for item in tmp_dir.iterdir():
                    target = bin_dir / item.name
                    if target.is_dir():
                        shutil.rmtree(target)
                    item.replace(target)
            seconds[component] = time.monotonic() - started
            _stamp(bin_dir, component).write_text(f"{seconds[component]:.1f}s\n")
            log.info("built %s in %.0fs", component, seconds[component])
    _check_versions(bin_dir, wanted)
    return BuildResult(bin_dir=bin_dir, key=key, seconds=seconds)


def _check_versions(bin_dir: Path, components: list[str]) -> None:
    """Fail loudly if the ldflags did not take (binaries would claim v0.0.0-master)."""
    if "k8s" in components:
        want = module_version("k8s", "k8s.io/kubernetes")
        out = subprocess.run(
            [str(bin_dir / "kube-apiserver"), "--version"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if out != f"Kubernetes {want}":
            raise BuildError(f"kube-apiserver --version printed {out!r}, expected {want}")
    if "helm" in components:
        want = module_version("helm", "helm.sh/helm/v3")
        out = subprocess.run(
            [str(bin_dir / "helm"), "version", "--short"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if not out.startswith(want):
            raise BuildError(f"helm version printed {out!r}, expected {want}")


@dataclass(frozen=True)
class LwsBuild:
    """The LWS manager binary, its CRDs and where the source came from."""

    dir: Path
    seconds: float
    source: str

    @property
    def manager(self) -> Path:
        return self.dir / "lws-manager"

    @property
    def crds(self) -> list[Path]:
        return sorted((self.dir / "crds").glob("*.yaml"))


def lws_dir(version: str = LWS_VERSION) -> Path:
    return CACHE_ROOT / "lws" / f"{version}-r{LWS_RECIPE}"


def shared_lws_source(version: str = LWS_VERSION) -> Path | None:
    """``<ancestor>/shared/third_party/lws-<version>`` (or ``$TOKENSCALE_LWS_SOURCE``).

    Why an ancestor walk: the repo lives in ``/work/main`` or a worktree ``/work/wt/x``;
    the unmodified upstream copy sits beside them under ``shared/third_party``.
    """
    env = os.environ.get("TOKENSCALE_LWS_SOURCE")
    if env:
        return Path(env) if (Path(env) / "go.mod").exists() else None
    for parent in GO_DIR.parents:
        cand = parent / "shared" / "third_party" / f"lws-{version}"
        if (cand / "go.mod").exists():
            return cand
    return None


def _lws_from_proxy(version: str, log_path: Path) -> Path | None:
    """Module directory of ``sigs.k8s.io/lws@version`` if the module proxy serves it."""
    import json

    with tempfile.TemporaryDirectory(prefix="tokenscale-lws-dl-") as tmp:
        try:
            out = _run_go(
                ["mod", "download", "-json", f"{LWS_MODULE}@{version}"], Path(tmp), log_path
            )
        except BuildError:
            return None
    info = json.loads(out)
    d = Path(info.get("Dir") or "")
    return d if (d / "go.mod").exists() else None


def ensure_lws(version: str = LWS_VERSION) -> LwsBuild:
    """Build (once) the LWS controller manager and stage its CRDs.

    Source: the module proxy first (``go mod download``), else the shared read-only copy;
    either is copied to a writable temp dir (the module cache and the CI copy are
    read-only) and built with ``-mod=mod`` so missing go.sum lines are fetched from the
    proxy.  Result: ``~/.cache/tokenscale/testbed/lws/<version>-r<recipe>/``.
    """
    out = lws_dir(version)
    stamp = out / ".lws.ok"
    if stamp.exists():
        return LwsBuild(out, 0.0, stamp.read_text().split()[-1])
    with _lock(CACHE_ROOT / "lws" / f".{version}.lock"):
        if stamp.exists():
            return LwsBuild(out, 0.0, stamp.read_text().split()[-1])
        if not go_available():
            raise BuildError(f"Go toolchain not found and the LWS manager is not cached in {out}")
        out.mkdir(parents=True, exist_ok=True)
        log_path = out / "build.log"
        started = time.monotonic()
        src = _lws_from_proxy(version, log_path)
        source = "proxy"
        if src is None:
            src, source = shared_lws_source(version), "shared"
        if src is None:
            raise BuildError(
                f"{LWS_MODULE}@{version} is neither served by the module proxy nor found under "
                "shared/third_party (set TOKENSCALE_LWS_SOURCE to an LWS source tree)"
            )
        log.info("building the LWS manager %s from %s (%s) into %s", version, src, source, out)
        with tempfile.TemporaryDirectory(dir=out, prefix=".tmp-build-") as tmp:
            work = Path(tmp) / "src"
            shutil.copytree(src, work, copy_function=shutil.copyfile)
            for path in [work, *work.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
            ldflags = f"-s -w -X sigs.k8s.io/lws/pkg/version.GitVersion={version}"
            goflags = f"{os.environ.get('GOFLAGS', '')} -mod=mod".strip()
            binary = Path(tmp) / "lws-manager"
            build_args = ["build", "-trimpath", "-ldflags", ldflags, "-o", str(binary), "./cmd"]
            _run_go(build_args, work, log_path, env={"GOFLAGS": goflags})
            crds = Path(tmp) / "crds"
            crds.mkdir()
            for crd in sorted((work / "config" / "crd" / "bases").glob("*.yaml")):
                shutil.copyfile(crd, crds / crd.name)
            for name in ("lws-manager", "crds"):
                target = out / name
                if target.is_dir():
                    shutil.rmtree(target)
                (Path(tmp) / name).replace(target)
        seconds = time.monotonic() - started
        stamp.write_text(f"{seconds:.1f}s {source}\n")
        log.info("built the LWS manager in %.0fs", seconds)
        return LwsBuild(out, seconds, source)


def prune(keep: str | None = None) -> list[Path]:
    """Delete cached binary sets other than ``keep`` (default: the current key)."""
    keep = keep or cache_key()
    removed = []
    for d in (CACHE_ROOT / "bin").glob("*"):
        if d.is_dir() and d.name != keep:
            shutil.rmtree(d)
            removed.append(d)
    return removed


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.testbed.build [--no-helm]``: prebuild (``make testbed-build``, CI)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.testbed.build", description=__doc__)
    parser.add_argument("--no-helm", action="store_true", help="skip helm (chart e2e needs it)")
    parser.add_argument("--lws", action="store_true", help="also build the LWS manager")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        res = ensure_binaries(DEFAULT_COMPONENTS if args.no_helm else ALL_COMPONENTS)
        if args.lws:
            lws = ensure_lws()
            if lws.seconds:
                print(
                    f"built the LWS manager in {lws.seconds:.0f}s ({lws.source})", file=sys.stderr
                )
    except BuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    for comp, secs in res.seconds.items():
        print(f"built {comp} in {secs:.0f}s", file=sys.stderr)
    print(res.bin_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
