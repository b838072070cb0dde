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

package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/crypto/bcrypt"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	"tagger.dev/tagger/pkg/localregistry"
)

// needPlugin skips t unless cmd/<name> exists, and fails it when the
// plugins did not build. Built plugins are on kubectl's PATH: run them as
// "kubectl image ...".
func (c *cluster) needPlugin(t *testing.T, name string) {
	t.Helper()
	if c.pluginErr != nil {
		t.Fatalf("kubectl plugins: %v", c.pluginErr)
	}
	if !slices.Contains(c.plugins, name) {
		t.Skipf("no cmd/%s in this repository yet", name)
	}
}

// mustKubectl runs kubectl as user and fails t on error.
func (c *cluster) mustKubectl(t *testing.T, user, stdin string, args ...string) string {
	t.Helper()
	out, err := c.kubectlAs(user, stdin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

var namespaceSeq atomic.Int32

// namespace creates a fresh namespace for t. Namespaces are not deleted:
// there is no namespace controller, and the cluster goes away with the run.
func (c *cluster) namespace(t *testing.T, prefix string) string {
	t.Helper()
	ns := fmt.Sprintf("%s-%d", prefix, namespaceSeq.Add(1))
	c.mustKubectl(t, "admin", "", "create", "namespace", ns)
	return ns
}

// importImage creates an ImageImport as user with kubectl create and returns
// what the server answered: the import with its outcome in the status.
func (c *cluster) importImage(t *testing.T, user, ns, target, from string, mirror, insecure bool) *v1beta1.ImageImport {
	t.Helper()
	out := c.mustKubectl(t, user, importYAML(target, from, mirror, insecure), "create", "-n", ns, "-o", "json", "-f", "-")
	ii := &v1beta1.ImageImport{}
	if err := json.Unmarshal([]byte(out), ii); err != nil {
		t.Fatalf("decoding the created ImageImport: %v\n%s", err, out)
	}
	return ii
}

func importYAML(target, from string, mirror, insecure bool) string {
	return fmt.Sprintf(`apiVersion: tagger.dev/v1beta1
kind: ImageImport
metadata:
  generateName: %s-
spec:
  targetImage: %s
  from: %s
  mirror: %t
  insecure: %t
`, target, target, from, mirror, insecure)
}

// getImage reads an Image as admin.
func (c *cluster) getImage(t *testing.T, ns, name string) *v1beta1.Image {
	t.Helper()
	out := c.mustKubectl(t, "admin", "", "get", "-n", ns, "image.tagger.dev", name, "-o", "json")
	img := &v1beta1.Image{}
	if err := json.Unmarshal([]byte(out), img); err != nil {
		t.Fatalf("decoding Image: %v\n%s", err, out)
	}
	return img
}

// importedCondition returns the Imported condition, failing t without one.
func importedCondition(t *testing.T, ii *v1beta1.ImageImport) *metav1.Condition {
	t.Helper()
	cond := meta.FindStatusCondition(ii.Status.Conditions, "Imported")
	if cond == nil {
		t.Fatalf("ImageImport %s has no Imported condition: %+v", ii.Name, ii.Status)
	}
	return cond
}

// mustImport checks that ii was imported, and returns its image reference.
func mustImport(t *testing.T, ii *v1beta1.ImageImport) string {
	t.Helper()
	if cond := importedCondition(t, ii); cond.Status != metav1.ConditionTrue {
		t.Fatalf("ImageImport %s: Imported=%s %s: %s", ii.Name, cond.Status, cond.Reason, cond.Message)
	}
	if ii.Status.HashReference == nil {
		t.Fatalf("ImageImport %s imported without a hashReference", ii.Name)
	}
	return ii.Status.HashReference.ImageReference
}

// registry is a registry on 127.0.0.1, in this process.
type registry struct {
	*localregistry.Registry
	remote []remote.Option // how this test reaches it
	https  bool
}

type registryOptions struct {
	tls   bool                            // https with a self-signed certificate
	users map[string]string               // basic authentication (htpasswd) when set
	wrap  func(http.Handler) http.Handler // sees every request when set
}

func startRegistry(t *testing.T, o registryOptions) *registry {
	t.Helper()
	opts := localregistry.Options{Handler: o.wrap}
	r := &registry{https: o.tls}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if o.tls {
		serverTLS, caPEM, err := localregistry.SelfSignedTLS()
		if err != nil {
			t.Fatal(err)
		}
		opts.TLS = serverTLS
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(caPEM)
		tr.TLSClientConfig = &tls.Config{RootCAs: pool}
	}
	r.remote = append(r.remote, remote.WithTransport(tr))
	if len(o.users) > 0 {
		opts.Htpasswd = filepath.Join(t.TempDir(), "htpasswd")
		if err := localregistry.WriteHtpasswd(opts.Htpasswd, o.users, bcrypt.MinCost); err != nil {
			t.Fatal(err)
		}
		for u, p := range o.users {
			r.remote = append(r.remote, remote.WithAuth(&authn.Basic{Username: u, Password: p}))
			break
		}
	}
	reg, err := localregistry.New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	r.Registry = reg
	return r
}

func (r *registry) ref(t *testing.T, repo string) name.Reference {
	t.Helper()
	var opts []name.Option
	if !r.https {
		opts = append(opts, name.Insecure)
	}
	ref, err := name.ParseReference(r.Addr()+"/"+repo, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// push writes a random image to repo:tag and returns its digest.
func (r *registry) push(t *testing.T, repoTag string) v1.Hash {
	t.Helper()
	img, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r.ref(t, repoTag), img, r.remote...); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// head returns the digest r serves for ref (a tag or a digest reference).
func (r *registry) head(t *testing.T, ref string) (v1.Hash, error) {
	t.Helper()
	desc, err := remote.Head(r.ref(t, ref), r.remote...)
	if err != nil {
		return v1.Hash{}, err
	}
	return desc.Digest, nil
}

// eventually polls check every 100ms until it returns nil or timeout passes.
func eventually(t *testing.T, timeout time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not after %s: %v", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// mirrorSecret returns a manifest for a mirror-registry-config Secret.
func mirrorSecret(ns, address string, extra map[string]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: v1\nkind: Secret\nmetadata:\n  name: mirror-registry-config\n  namespace: %s\nstringData:\n  address: %q\n", ns, address)
	for k, v := range extra {
		fmt.Fprintf(&b, "  %s: %q\n", k, v)
	}
	return b.String()
}

// informerDelay is how long Tagger's informers get to see a new Secret.
// Watch events arrive in milliseconds on loopback; imports have no other
// signal to wait on.
const informerDelay = time.Second
