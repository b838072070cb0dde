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

package integration

import (
	"bytes"
	"context"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/cli-runtime/pkg/printers"

	"tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	"tagger.dev/tagger/pkg/cmd/plugin"
	"tagger.dev/tagger/test/scenario"
)

// plugin runs "kubectl image ARGS" in-process against s.
func (s *testServer) plugin(args ...string) (string, string, error) {
	var out, errOut bytes.Buffer
	cmd := plugin.NewCommand(genericiooptions.IOStreams{In: &bytes.Buffer{}, Out: &out, ErrOut: &errOut})
	cmd.SetArgs(append(args, "--kubeconfig="+s.kubeconfig, "--namespace="+ns))
	err := cmd.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

// table prints Image name as "kubectl get img NAME" does: the server's
// Table, through kubectl's table printer.
func (s *testServer) table(name string) (string, error) {
	table := &metav1.Table{}
	err := s.client.TaggerV1beta1().RESTClient().Get().Namespace(ns).Resource("images").Name(name).
		SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").Do(context.Background()).Into(table)
	if err != nil {
		return "", err
	}
	var out bytes.Buffer
	if err := printers.NewTablePrinter(printers.PrintOptions{}).PrintObj(table, &out); err != nil {
		return "", err
	}
	return out.String(), nil
}

func (s *testServer) scenarioEnv(t *testing.T, mirror string) scenario.Env {
	return scenario.Env{
		Plugin: s.plugin,
		Table:  s.table,
		Image: func(name string) (*v1beta1.Image, error) {
			return s.client.TaggerV1beta1().Images(ns).Get(context.Background(), name, metav1.GetOptions{})
		},
		Repository: func(name string) string { return mirror + "/" + ns + "/" + name },
		Work:       t.TempDir(),
	}
}

// The push → pull → index → rollback walk-through, with the plugin
// in-process: a repeated digest included, rollback visits every
// generation once, one row is current, and get and pull follow the pin.
func TestPushPullRollbackScenario(t *testing.T) {
	mirror := startRegistry(t, nil)
	s := startServer(t, serverOptions{mirror: mirror.Addr()})
	scenario.Run(t, s.scenarioEnv(t, mirror.Addr()))
	// What moved through the subresources shows in /metrics, by mirror host.
	series := scrape(t, s)
	host := `registry="` + mirror.Addr() + `"`
	if pushed, pulled := sum(series, "tagger_pushed_bytes_total", host), sum(series, "tagger_pulled_bytes_total", host); pushed < 1 || pulled < 1 {
		t.Errorf("tagger_pushed_bytes_total %v, tagger_pulled_bytes_total %v after pushes and pulls", pushed, pulled)
	}
}
