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
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// etcdutlTool is etcdctl and etcdutl at the version of tools/etcd, for the
// backup and restore the README documents.
var etcdutlTool = tool{
	name:      "etcdutl",
	module:    "tools/etcdutl",
	versionOf: "go.etcd.io/etcd/etcdutl/v3",
	pkgs: map[string]string{
		"etcdctl": "go.etcd.io/etcd/etcdctl/v3",
		"etcdutl": "go.etcd.io/etcd/etcdutl/v3",
	},
}

// TestEtcdBackupRestore runs the README's backup and restore ("Install on a
// cluster", etcd) against the etcd tagger-apiserver uses: etcdctl snapshot
// save, a change after the snapshot, etcdutl snapshot restore into a new data
// directory, a second etcd on it and a second tagger-apiserver on that. The
// restored server has the Image as it was at the snapshot, not the change.
func TestEtcdBackupRestore(t *testing.T) {
	c := needCluster(t)
	tools, err := etcdutlTool.build(t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	etcdBins, err := etcdTool.build(t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	run := func(bin string, args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, tools[bin], args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", bin, strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	var etcdURL string
	for _, a := range c.taggerArgs {
		if v, ok := strings.CutPrefix(a, "--etcd-servers="); ok {
			etcdURL = v
		}
	}
	if etcdURL == "" {
		t.Fatalf("no --etcd-servers in %q", c.taggerArgs)
	}

	src := startRegistry(t, registryOptions{})
	ns := c.namespace(t, "backup")
	v1 := src.Addr() + "/org/app@" + src.push(t, "org/app:v1").String()
	v2 := src.Addr() + "/org/app@" + src.push(t, "org/app:v2").String()
	first := c.importImage(t, "admin", ns, "app", src.Addr()+"/org/app:v1", false, true)
	mustImport(t, first)

	// Backup, as the README has it (there through kubectl port-forward).
	dir := t.TempDir()
	backup := filepath.Join(dir, "backup.db")
	run("etcdctl", "--endpoints="+strings.TrimPrefix(etcdURL, "http://"), "snapshot", "save", backup)
	var status struct {
		Revision  int64 `json:"revision"`
		TotalKey  int   `json:"totalKey"`
		TotalSize int64 `json:"totalSize"`
	}
	if err := json.Unmarshal([]byte(run("etcdutl", "snapshot", "status", backup, "-w", "json")), &status); err != nil {
		t.Fatal(err)
	}
	if status.Revision == 0 || status.TotalKey == 0 {
		t.Fatalf("snapshot status %+v", status)
	}
	t.Logf("snapshot: revision %d, %d keys, %d bytes", status.Revision, status.TotalKey, status.TotalSize)

	// After the snapshot: a second generation of app, and a new Image.
	if got := mustImport(t, c.importImage(t, "admin", ns, "app", src.Addr()+"/org/app:v2", false, true)); got != v2 {
		t.Fatalf("second import %s, want %s", got, v2)
	}
	mustImport(t, c.importImage(t, "admin", ns, "later", src.Addr()+"/org/app:v2", false, true))
	var live metav1.List
	if err := json.Unmarshal([]byte(c.mustKubectl(t, "admin", "", "get", "--raw", "/apis/tagger.dev/v1beta1/namespaces/"+ns+"/imageimports")), &live); err != nil {
		t.Fatal(err)
	}

	// Restore, as the README has it, into a new data directory, for a
	// member of its own; then etcd on it.
	clientPort, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	peerPort, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	restoredURL := fmt.Sprintf("http://127.0.0.1:%d", clientPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	data := filepath.Join(dir, "data")
	run("etcdutl", "snapshot", "restore", backup, "--data-dir", data, "--name", "restored",
		"--initial-cluster", "restored="+peerURL, "--initial-advertise-peer-urls", peerURL,
		"--bump-revision", "1000000000", "--mark-compacted")
	etcd, err := c.start("etcd-restored", etcdBins["etcd"], "--name=restored", "--data-dir="+data,
		"--listen-client-urls="+restoredURL, "--advertise-client-urls="+restoredURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--unsafe-no-fsync", "--log-level=warn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // before t.TempDir goes
		_ = etcd.cmd.Process.Signal(os.Interrupt)
		select {
		case <-etcd.exited:
		case <-time.After(10 * time.Second):
			_ = etcd.cmd.Process.Kill()
			<-etcd.exited
		}
	})
	if err := waitFor("restored etcd healthy", 30*time.Second, etcd, func() error {
		_, err := exec.Command(tools["etcdctl"], "--endpoints="+restoredURL, "endpoint", "health").CombinedOutput()
		return err
	}); err != nil {
		t.Fatal(err)
	}

	// A second tagger-apiserver on the restored etcd. The restored etcd holds
	// the other tests' objects too: this server, short-lived, claims no
	// import of theirs (another identity, whose claims are 2 minutes from
	// stale) and reaches no registry of theirs (--allowed-registries).
	_, restored := c.replica(t, "tagger-restored", "--etcd-servers="+restoredURL,
		"--import-identity=restored", "--allowed-registries=restored.invalid")
	ctx := context.Background()
	img, err := restored.TaggerV1beta1().Images(ns).Get(ctx, "app", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if h := img.Status.HashReferences; len(h) != 1 || h[0].ImageReference != v1 {
		t.Errorf("restored Image app history %+v, want exactly %s", h, v1)
	}
	if _, err := restored.TaggerV1beta1().Images(ns).Get(ctx, "later", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("Image later, created after the snapshot, is restored (err %v)", err)
	}
	imports, err := restored.TaggerV1beta1().ImageImports(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(imports.Items) != 1 || imports.Items[0].Name != first.Name {
		var names []string
		for _, ii := range imports.Items {
			names = append(names, ii.Name)
		}
		t.Errorf("restored ImageImports %v, want only %s", names, first.Name)
	}
	// --bump-revision: resource versions go on from above the live ones, so
	// no client sees them go back.
	liveRV, _ := strconv.ParseUint(live.ResourceVersion, 10, 64)
	if got, _ := strconv.ParseUint(imports.ResourceVersion, 10, 64); liveRV == 0 || got <= liveRV {
		t.Errorf("restored resourceVersion %q, not above the live %q", imports.ResourceVersion, live.ResourceVersion)
	}
}
