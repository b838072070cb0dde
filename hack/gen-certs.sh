#!/usr/bin/env bash
# Copyright The Tagger Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

# gen-certs.sh writes what artifacts/kustomization.yaml needs besides the
# manifests: Tagger's serving certificate (tls.crt, tls.key), the CA that
# signed it (ca.crt), and certs/apiservice-cabundle.yaml, a patch that puts
# that CA into the APIService's caBundle.
#
# By default it makes a CA (kept in ca.key, reused on later runs) and a
# serving certificate for the Service tagger-apiserver.tagger.svc. Existing
# files are kept unless --force is given or the certificate expires within
# 30 days. With --cert/--key/--ca it installs a certificate of your own.

set -o errexit -o nounset -o pipefail

usage() {
	cat <<EOF
Usage: $0 [options]
  -o, --out DIR         where to write (default: artifacts/certs next to this script)
  --service NAME        Service name (default: tagger-apiserver)
  --namespace NS        Service namespace (default: tagger)
  --days N              serving certificate validity in days (default: 365)
  --cert FILE --key FILE --ca FILE
                        use this certificate, key and CA instead of generating them
  --force               regenerate even if a valid certificate exists
EOF
}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out="${root}/artifacts/certs"
service=tagger-apiserver
namespace=tagger
days=365
user_cert="" user_key="" user_ca=""
force=false
while [[ $# -gt 0 ]]; do
	case "$1" in
	-o | --out) out="$2"; shift 2 ;;
	--service) service="$2"; shift 2 ;;
	--namespace) namespace="$2"; shift 2 ;;
	--days) days="$2"; shift 2 ;;
	--cert) user_cert="$2"; shift 2 ;;
	--key) user_key="$2"; shift 2 ;;
	--ca) user_ca="$2"; shift 2 ;;
	--force) force=true; shift ;;
	-h | --help) usage; exit 0 ;;
	*) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
	esac
done
command -v openssl >/dev/null || { echo "openssl is required" >&2; exit 1; }

host="${service}.${namespace}.svc"
mkdir -p "${out}"
chmod 700 "${out}"
umask 077

if [[ -n "${user_cert}${user_key}${user_ca}" ]]; then
	if [[ -z "${user_cert}" || -z "${user_key}" || -z "${user_ca}" ]]; then
		echo "--cert, --key and --ca go together" >&2
		exit 2
	fi
	openssl verify -CAfile "${user_ca}" "${user_cert}" >/dev/null
	openssl x509 -noout -checkhost "${host}" -in "${user_cert}" | grep -q 'does match' ||
		{ echo "${user_cert} is not valid for ${host}" >&2; exit 1; }
	cp "${user_cert}" "${out}/tls.crt"
	cp "${user_key}" "${out}/tls.key"
	cp "${user_ca}" "${out}/ca.crt"
	rm -f "${out}/ca.key"
elif ${force} || ! [[ -s "${out}/tls.crt" && -s "${out}/tls.key" && -s "${out}/ca.crt" ]] ||
	! openssl x509 -noout -checkend $((30 * 24 * 3600)) -in "${out}/tls.crt" >/dev/null ||
	! openssl x509 -noout -checkhost "${host}" -in "${out}/tls.crt" | grep -q 'does match'; then
	if ${force} || ! [[ -s "${out}/ca.key" && -s "${out}/ca.crt" ]] ||
		! openssl x509 -noout -checkend $((days * 24 * 3600)) -in "${out}/ca.crt" >/dev/null; then
		openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
			-keyout "${out}/ca.key" -out "${out}/ca.crt" -days 3650 \
			-subj "/CN=tagger-apiserver-ca@$(date +%s)" \
			-addext "basicConstraints=critical,CA:TRUE" \
			-addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
	fi
	ext="${out}/tls.ext"
	cat >"${ext}" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:${host},DNS:${host}.cluster.local,DNS:${service}.${namespace},DNS:${service}
EOF
	openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
		-keyout "${out}/tls.key" -out "${out}/tls.csr" -subj "/CN=${host}" 2>/dev/null
	openssl x509 -req -in "${out}/tls.csr" -CA "${out}/ca.crt" -CAkey "${out}/ca.key" \
		-set_serial "0x$(openssl rand -hex 16)" -days "${days}" -extfile "${ext}" \
		-out "${out}/tls.crt" 2>/dev/null
	rm -f "${out}/tls.csr" "${ext}"
fi

cat >"${out}/apiservice-cabundle.yaml" <<EOF
# Written by hack/gen-certs.sh: the CA that signed ${host}'s serving certificate.
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: v1beta1.tagger.dev
spec:
  caBundle: $(openssl base64 -A -in "${out}/ca.crt")
EOF
chmod 644 "${out}/tls.crt" "${out}/ca.crt" "${out}/apiservice-cabundle.yaml"
echo "Serving certificate for ${host} in ${out}; install with: kubectl apply -k $(dirname "${out}")"
