#!/usr/bin/env bash
# Regenerates deepcopy, conversion, defaults, OpenAPI, clientset (with apply
# configurations), listers and informers for pkg/apis.
set -o errexit
set -o nounset
set -o pipefail

SCRIPT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
THIS_PKG="tagger.dev/tagger"
# OUTPUT_ROOT lets verify-codegen.sh generate into a copy of the tree.
OUTPUT_ROOT=${OUTPUT_ROOT:-${SCRIPT_ROOT}}
export GOFLAGS="${GOFLAGS:-} -tags=containers_image_openpgp"
export CGO_ENABLED=0

# "go list -m -f {{.Dir}}" prints nothing for a module that is not in the
# module cache yet (nothing else downloads code-generator: only hack/tools.go
# imports it), so download it first; this is a no-op when it is there.
if [ -z "${CODEGEN_PKG:-}" ]; then
    (cd "${SCRIPT_ROOT}" && go mod download k8s.io/code-generator)
    CODEGEN_PKG=$(cd "${SCRIPT_ROOT}" && go list -m -f '{{.Dir}}' k8s.io/code-generator)
fi
if [ ! -f "${CODEGEN_PKG}/kube_codegen.sh" ]; then
    echo "k8s.io/code-generator not found (got '${CODEGEN_PKG}'): is the Go module proxy reachable?" >&2
    exit 1
fi
# shellcheck source=/dev/null
source "${CODEGEN_PKG}/kube_codegen.sh"

cd "${OUTPUT_ROOT}"
BOILERPLATE="${SCRIPT_ROOT}/hack/boilerplate.go.txt"

kube::codegen::gen_helpers \
    --boilerplate "${BOILERPLATE}" \
    "${OUTPUT_ROOT}/pkg/apis"

kube::codegen::gen_openapi \
    --output-dir "${OUTPUT_ROOT}/pkg/generated/openapi" \
    --output-pkg "${THIS_PKG}/pkg/generated/openapi" \
    --output-model-name-file zz_generated.model_name.go \
    --report-filename "${SCRIPT_ROOT}/hack/api-violations.list" \
    ${UPDATE_API_KNOWN_VIOLATIONS:+"--update-report"} \
    --boilerplate "${BOILERPLATE}" \
    "${OUTPUT_ROOT}/pkg/apis"

kube::codegen::gen_client \
    --with-watch \
    --with-applyconfig \
    --applyconfig-openapi-schema <(go run ./pkg/generated/openapi/cmd/models-schema) \
    --output-dir "${OUTPUT_ROOT}/pkg/generated" \
    --output-pkg "${THIS_PKG}/pkg/generated" \
    --boilerplate "${BOILERPLATE}" \
    "${OUTPUT_ROOT}/pkg/apis"
