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
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"tagger.dev/tagger/pkg/importer"
)

// testPKI is a client CA for the webhook's callers; it implements CAs.
type testPKI struct {
	ca   *authority
	pool *x509.CertPool
}

type authority struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newAuthority(t *testing.T, cn string) *authority {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &authority{cert: cert, key: key}
}

func (a *authority) issue(t *testing.T, cn string, usage x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, &key.PublicKey, a.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func newTestPKI(t *testing.T) *testPKI {
	p := &testPKI{ca: newAuthority(t, "client-ca"), pool: x509.NewCertPool()}
	p.pool.AddCert(p.ca.cert)
	return p
}

func (p *testPKI) VerifyOptions() (x509.VerifyOptions, bool) {
	return x509.VerifyOptions{Roots: p.pool}, true
}

// server serves h over TLS, asking for client certificates as
// tagger-apiserver does (RequestClientCert: verification is the handler's).
func (p *testPKI) server(t *testing.T, h http.Handler) *httptest.Server {
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// client returns a client presenting a certificate for cn from ca; a nil
// ca presents none.
func (p *testPKI) client(t *testing.T, cn string, ca *authority) *http.Client {
	cfg := &tls.Config{InsecureSkipVerify: true} //nolint:gosec // the test server's own certificate
	if ca != nil {
		cert := ca.issue(t, cn, x509.ExtKeyUsageClientAuth)
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
}

// Only kube-apiserver's client certificate gets an answer; anyone else is
// refused before the body is read, and a forged review writes no Secret.
func TestOnlyAllowedCallersAreAnswered(t *testing.T) {
	pki := newTestPKI(t)
	secrets := fake.NewClientset()
	mirror := &importer.Mirror{Repository: "mirror.example/ns1/app", Credential: &importer.Credential{Username: "u", Password: "p"}}
	var read atomic.Int64
	h := &Handler{Images: images, Mirrors: fakeMirrors{mirror}, PullSecrets: &ClusterPullSecrets{Client: secrets},
		Callers: &Callers{CA: pki, Names: []string{DefaultCallerName}}}
	srv := pki.server(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = countingBody{r.Body, &read}
		h.ServeHTTP(w, r)
	}))
	req := podRequest(t, &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "app"}}}})
	review, _ := json.Marshal(&admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"}, Request: req})

	other := newAuthority(t, "other-ca")
	for name, tc := range map[string]struct {
		client *http.Client
		want   int
	}{
		"no certificate":                  {pki.client(t, "", nil), http.StatusUnauthorized},
		"self-signed, the allowed name":   {pki.client(t, DefaultCallerName, other), http.StatusUnauthorized},
		"the client CA, another user":     {pki.client(t, "alice", pki.ca), http.StatusForbidden},
		"the client CA, the allowed name": {pki.client(t, DefaultCallerName, pki.ca), http.StatusOK},
	} {
		t.Run(name, func(t *testing.T) {
			read.Store(0)
			resp, err := tc.client.Post(srv.URL, "application/json", bytes.NewReader(review))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("%d %s, want %d", resp.StatusCode, b, tc.want)
			}
			if tc.want != http.StatusOK && read.Load() != 0 {
				t.Errorf("the body of a refused call was read (%d bytes)", read.Load())
			}
		})
	}
	// Only the allowed call wrote the pull Secret.
	if list, _ := secrets.CoreV1().Secrets("ns1").List(t.Context(), metav1.ListOptions{}); len(list.Items) != 1 {
		t.Fatalf("pull Secrets written: %d, want 1 (by the allowed call)", len(list.Items))
	}
	// A server certificate (not for client authentication) is refused.
	serverCert := pki.ca.issue(t, DefaultCallerName, x509.ExtKeyUsageServerAuth)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, //nolint:gosec // test server
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &serverCert, nil }}}}
	if resp, err := c.Post(srv.URL, "application/json", bytes.NewReader(review)); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("server certificate: %v %v", resp, err)
	}
	// No callers configured: nobody.
	open := pki.server(t, &Handler{Images: images})
	if resp, err := pki.client(t, DefaultCallerName, pki.ca).Post(open.URL, "application/json", bytes.NewReader(review)); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("handler without callers: %v %v", resp, err)
	}
}

// The body is bounded to what a pod review needs.
func TestReviewSizeBound(t *testing.T) {
	pki := newTestPKI(t)
	srv := pki.server(t, &Handler{Images: images, Callers: &Callers{CA: pki, Names: []string{DefaultCallerName}}})
	client := pki.client(t, DefaultCallerName, pki.ca)
	big := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","object":{"pad":"` + strings.Repeat("x", MaxReviewBytes) + `"}}}`
	resp, err := client.Post(srv.URL, "application/json", strings.NewReader(big))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized review: %d", resp.StatusCode)
	}
	// Without a Content-Length too.
	pr, pw := io.Pipe()
	go func() { _, _ = pw.Write([]byte(big)); pw.Close() }()
	resp, err = client.Post(srv.URL, "application/json", pr)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized streamed review: %d", resp.StatusCode)
	}
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c countingBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}
