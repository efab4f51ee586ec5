#!/usr/bin/env bash
# Checks the Helm chart with the real tools, offline:
#   1. `helm lint --strict` and `helm template` for every charts/infergate/ci/*.yaml and
#      examples/*/values.yaml values file, once as a plain cluster and once as a cluster that serves
#      monitoring.coreos.com/v1 (ServiceMonitor); the examples' model-server manifests validated too;
#   2. every rendered object validated against the Kubernetes 1.33 schemas (kubernetes-validate
#      --strict); a built-in kind without a schema is an error, CRD kinds (ServiceMonitor) only warn;
#   3. every charts/infergate/ci/invalid/*.yaml is refused by values.schema.json with the message its
#      first line (`# expect: ...`) names.
# The same checks, plus the config and RBAC contracts, run as Rust tests: `cargo test --test chart`.
# Tools come from scripts/install-tools.sh (.tools/bin/helm, .tools/venv/bin/kubernetes-validate).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
chart="$root/charts/infergate"
helm=${HELM:-$root/.tools/bin/helm}
[ -x "$helm" ] || helm=$(command -v helm || true)
validate=${KUBERNETES_VALIDATE:-$root/.tools/venv/bin/kubernetes-validate}
[ -x "$validate" ] || validate=$(command -v kubernetes-validate || true)
if [ -z "$helm" ] || [ -z "$validate" ]; then
  echo "check-chart: helm or kubernetes-validate missing; run scripts/install-tools.sh" >&2
  exit 1
fi
kube_version=1.33.0
# Kinds the Kubernetes schemas do not cover: custom resources, which only warn.
crd_kinds='ServiceMonitor|InferencePool'
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $*"; }
bad() { failed=$((failed + 1)); echo "FAIL $*"; }

check_schemas() { # file-with-validator-output
  local missing
  missing=$(grep "Couldn't find schema" "$1" | grep -Ev "kind ($crd_kinds) " || true)
  [ -z "$missing" ] || { echo "$missing"; return 1; }
}

for values in "$chart"/ci/*.yaml "$root"/examples/*/values.yaml; do
  name=${values#"$root"/}
  if "$helm" lint --strict "$chart" -f "$values" >"$out/lint" 2>&1; then
    ok "lint $name"
  else
    bad "lint $name"; cat "$out/lint"
  fi
  for caps in plain monitoring; do
    extra=()
    [ "$caps" = monitoring ] && extra=(--api-versions monitoring.coreos.com/v1/ServiceMonitor)
    if ! "$helm" template infergate "$chart" -n llm -f "$values" "${extra[@]}" >"$out/rendered.yaml" 2>"$out/err"; then
      bad "template $name ($caps)"; cat "$out/err"; continue
    fi
    if ! "$validate" --strict -k "$kube_version" - <"$out/rendered.yaml" >"$out/validate" 2>&1; then
      bad "validate $name ($caps)"; cat "$out/validate"; continue
    fi
    if ! check_schemas "$out/validate"; then
      bad "validate $name ($caps): no schema for a built-in kind"; continue
    fi
    objects=$(grep -c '^kind: ' "$out/rendered.yaml")
    ok "template+validate $name ($caps): $objects objects"
  done
done

for manifest in "$root"/examples/*/*.yaml; do
  name=${manifest#"$root"/}
  [ "$(basename "$manifest")" = values.yaml ] && continue
  if "$validate" --strict -k "$kube_version" "$manifest" >"$out/validate" 2>&1 && check_schemas "$out/validate"; then
    ok "validate $name"
  else
    bad "validate $name"; cat "$out/validate"
  fi
done

for values in "$chart"/ci/invalid/*.yaml; do
  name=$(basename "$values" .yaml)
  expect=$(sed -n '1s/^# expect: //p' "$values")
  if "$helm" template infergate "$chart" -f "$values" >/dev/null 2>"$out/err"; then
    bad "schema rejects $name: helm accepted it"
  elif grep -qF -- "$expect" "$out/err"; then
    ok "schema rejects $name"
  else
    bad "schema rejects $name: message lacks '$expect'"; cat "$out/err"
  fi
done

echo "check-chart: $passed passed, $failed failed"
[ "$failed" = 0 ]
