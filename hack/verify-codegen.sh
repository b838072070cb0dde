#!/usr/bin/env bash
# Fails when the generated code under pkg/ is not what update-codegen.sh makes.
set -o errexit
set -o nounset
set -o pipefail

SCRIPT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "${TMP}"' EXIT

# Generate into a copy of the module so the work tree is never touched.
cp -a "${SCRIPT_ROOT}/go.mod" "${SCRIPT_ROOT}/go.sum" "${SCRIPT_ROOT}/pkg" "${TMP}/"
mkdir -p "${TMP}/hack"
cp -a "${SCRIPT_ROOT}/hack/." "${TMP}/hack/"
OUTPUT_ROOT="${TMP}" "${SCRIPT_ROOT}/hack/update-codegen.sh"

if ! diff -Naupr "${SCRIPT_ROOT}/pkg" "${TMP}/pkg"; then
    echo "Generated code is out of date: run 'make update-codegen'." >&2
    exit 1
fi
echo "Generated code is up to date."
