/*
Copyright The Tagger Authors.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

package podimages

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"slices"
)

// DefaultCallerName is the common name of the client certificate
// kube-apiserver presents to the webhook unless configured otherwise
// (tagger-apiserver --pod-webhook-allowed-names).
const DefaultCallerName = "kube-apiserver-webhook-client"

// CAs verifies client certificates: the client CAs of the server's
// authentication (dynamiccertificates.CAContentProvider fits).
type CAs interface {
	VerifyOptions() (x509.VerifyOptions, bool)
}

// Callers admits callers of the webhook by their TLS client certificate:
// it must verify against CA for client authentication, and its common name
// must be one of Names. kube-apiserver presents such a certificate when its
// --admission-control-config-file gives the webhook plugins a kubeconfig
// with a user for the webhook's service (see artifacts/README.md).
type Callers struct {
	CA    CAs
	Names []string
}

// Check returns nil for an allowed caller, else the HTTP status to answer
// (401 without a verified certificate, 403 for another name) and why.
func (c *Callers) Check(r *http.Request) (int, error) {
	if c == nil || c.CA == nil || len(c.Names) == 0 {
		return http.StatusForbidden, errors.New("the pod webhook has no allowed callers configured")
	}
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return http.StatusUnauthorized, errors.New("the pod webhook answers only kube-apiserver, which must present its client certificate (the admission kubeconfig of its --admission-control-config-file)")
	}
	opts, ok := c.CA.VerifyOptions()
	if !ok {
		return http.StatusUnauthorized, errors.New("no client CA to verify callers of the pod webhook with")
	}
	opts.KeyUsages = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	opts.Intermediates = x509.NewCertPool()
	for _, cert := range r.TLS.PeerCertificates[1:] {
		opts.Intermediates.AddCert(cert)
	}
	leaf := r.TLS.PeerCertificates[0]
	if _, err := leaf.Verify(opts); err != nil {
		return http.StatusUnauthorized, fmt.Errorf("client certificate %q not verified: %w", leaf.Subject.CommonName, err)
	}
	if !slices.Contains(c.Names, leaf.Subject.CommonName) {
		return http.StatusForbidden, fmt.Errorf("client certificate %q may not call the pod webhook (allowed: %v)", leaf.Subject.CommonName, c.Names)
	}
	return 0, nil
}
