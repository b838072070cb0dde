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
package imagecopy

import (
	"net/http"
	"strings"
	"testing"

	"k8s.io/client-go/rest"
)

func TestAPIErrorSaysWhatToDo(t *testing.T) {
	cases := map[int]string{
		http.StatusUnauthorized:   "check your kubeconfig",
		http.StatusForbidden:      "create on images/push",
		http.StatusGatewayTimeout: "--chunk-size",
		http.StatusConflict:       "boom",
	}
	for code, want := range cases {
		err := &APIError{Code: code, Message: "boom"}
		if got := err.Error(); !strings.Contains(got, want) || !strings.Contains(got, "boom") {
			t.Errorf("%d: %q lacks %q", code, got, want)
		}
	}
}

func TestRelayServesOnlyItsOwnClient(t *testing.T) {
	r, err := StartRelay(Target{Config: &rest.Config{Host: "https://127.0.0.1:1"}, Namespace: "ns", Name: "app"}, false)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	addr := r.ln.Addr().String()
	do := func(host, user, pass string) int {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/v2/", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	cases := map[string]struct {
		host, user, pass string
		want             int
	}{
		"its client":          {addr, relayUser, r.password, http.StatusOK},
		"no credentials":      {addr, "", "", http.StatusUnauthorized},
		"wrong password":      {addr, relayUser, "guess", http.StatusUnauthorized},
		"rebinding host name": {"evil.example:" + strings.Split(addr, ":")[1], relayUser, r.password, http.StatusForbidden},
	}
	for name, tc := range cases {
		if got := do(tc.host, tc.user, tc.pass); got != tc.want {
			t.Errorf("%s: status %d, want %d", name, got, tc.want)
		}
	}
}
