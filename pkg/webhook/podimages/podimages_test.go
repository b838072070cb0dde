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
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"tagger.dev/tagger/pkg/apis/tagger"
	"tagger.dev/tagger/pkg/importer"
)

const (
	appRef  = "mirror.example/ns1/app@sha256:1111111111111111111111111111111111111111111111111111111111111111"
	toolRef = "registry.example.com/org/tool@sha256:2222222222222222222222222222222222222222222222222222222222222222"
)

type fakeImages map[string]*tagger.Image

func (f fakeImages) Get(_ context.Context, namespace, name string) (*tagger.Image, error) {
	if img, ok := f[namespace+"/"+name]; ok {
		return img, nil
	}
	return nil, apierrors.NewNotFound(tagger.Resource("images"), name)
}

func image(ns, name, current string) *tagger.Image {
	return &tagger.Image{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Status: tagger.ImageStatus{CurrentReference: current}}
}

var images = fakeImages{
	"ns1/app":   image("ns1", "app", appRef),
	"ns1/tool":  image("ns1", "tool", toolRef),
	"ns1/empty": image("ns1", "empty", ""),
	"ns2/app":   image("ns2", "app", appRef),
}

func podRequest(t *testing.T, pod *corev1.Pod) *admissionv1.AdmissionRequest {
	t.Helper()
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	return &admissionv1.AdmissionRequest{
		UID:       "uid-1",
		Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
		Namespace: "ns1",
		Operation: admissionv1.Create,
		Object:    runtime.RawExtension{Raw: raw},
	}
}

// apply returns the pod after the response's patch.
func apply(t *testing.T, req *admissionv1.AdmissionRequest, resp *admissionv1.AdmissionResponse) *corev1.Pod {
	t.Helper()
	if !resp.Allowed {
		t.Fatalf("refused: %v", resp.Result)
	}
	raw := req.Object.Raw
	if resp.Patch != nil {
		if *resp.PatchType != admissionv1.PatchTypeJSONPatch {
			t.Fatalf("patch type %s", *resp.PatchType)
		}
		p, err := jsonpatch.DecodePatch(resp.Patch)
		if err != nil {
			t.Fatalf("patch %s: %v", resp.Patch, err)
		}
		if raw, err = p.Apply(raw); err != nil {
			t.Fatalf("applying %s: %v", resp.Patch, err)
		}
	}
	pod := &corev1.Pod{}
	if err := json.Unmarshal(raw, pod); err != nil {
		t.Fatal(err)
	}
	return pod
}

func TestCreateResolvesContainersAndInitContainers(t *testing.T) {
	h := &Handler{Images: images}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Annotations: map[string]string{"keep": "me"}},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "init", Image: "tool"}},
			Containers: []corev1.Container{
				{Name: "main", Image: "app"},
				{Name: "explicit", Image: "tagger.dev/app"},
				{Name: "nginx", Image: "nginx:1.27"},
				{Name: "unknown", Image: "busybox"},
				{Name: "qualified", Image: "registry.example.com/org/app"},
				{Name: "tagged", Image: "app:v1"},
			},
		}}
	req := podRequest(t, pod)
	got := apply(t, req, h.Review(context.Background(), req))
	want := map[string]string{"init": toolRef, "main": appRef, "explicit": appRef, "nginx": "nginx:1.27",
		"unknown": "busybox", "qualified": "registry.example.com/org/app", "tagged": "app:v1"}
	for _, c := range append(got.Spec.InitContainers, got.Spec.Containers...) {
		if c.Image != want[c.Name] {
			t.Errorf("container %s: image %q, want %q", c.Name, c.Image, want[c.Name])
		}
	}
	if got.Annotations["keep"] != "me" {
		t.Errorf("annotations lost: %v", got.Annotations)
	}
	var rec map[string]Resolved
	if err := json.Unmarshal([]byte(got.Annotations[ResolvedAnnotation]), &rec); err != nil {
		t.Fatalf("annotation %q: %v", got.Annotations[ResolvedAnnotation], err)
	}
	wantRec := map[string]Resolved{"init": {"tool", toolRef}, "main": {"app", appRef}, "explicit": {"tagger.dev/app", appRef}}
	if len(rec) != len(wantRec) {
		t.Errorf("annotation %v, want %v", rec, wantRec)
	}
	for k, v := range wantRec {
		if rec[k] != v {
			t.Errorf("annotation[%s] = %v, want %v", k, rec[k], v)
		}
	}
}

func TestNoAnnotationsYet(t *testing.T) {
	h := &Handler{Images: images}
	req := podRequest(t, &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "app"}}}})
	got := apply(t, req, h.Review(context.Background(), req))
	if got.Spec.Containers[0].Image != appRef || got.Annotations[ResolvedAnnotation] == "" {
		t.Errorf("got %v %v", got.Spec.Containers[0].Image, got.Annotations)
	}
}

func TestNoOpOutsideTheRule(t *testing.T) {
	h := &Handler{Images: images, OptedIn: func(ns string) (bool, error) { return ns == "ns1", nil }}
	pod := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "app"}}}}
	for name, mod := range map[string]func(*admissionv1.AdmissionRequest){
		"namespace not opted in": func(r *admissionv1.AdmissionRequest) { r.Namespace = "ns2" },
		"pod update keeping images": func(r *admissionv1.AdmissionRequest) {
			r.Operation, r.OldObject = admissionv1.Update, r.Object
		},
		"status update": func(r *admissionv1.AdmissionRequest) {
			r.Operation, r.SubResource = admissionv1.Update, "status"
		},
		"other resource": func(r *admissionv1.AdmissionRequest) { r.Resource.Resource = "configmaps" },
		"other group":    func(r *admissionv1.AdmissionRequest) { r.Resource.Group = "apps" },
	} {
		t.Run(name, func(t *testing.T) {
			req := podRequest(t, pod)
			mod(req)
			resp := h.Review(context.Background(), req)
			if !resp.Allowed || resp.Patch != nil {
				t.Errorf("want allowed without patch, got %+v", resp)
			}
		})
	}
	t.Run("nothing to resolve", func(t *testing.T) {
		req := podRequest(t, &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "nginx"}}}})
		resp := h.Review(context.Background(), req)
		if !resp.Allowed || resp.Patch != nil {
			t.Errorf("want allowed without patch, got %+v", resp)
		}
	})
}

func TestRefusals(t *testing.T) {
	h := &Handler{Images: images}
	for _, tc := range []struct{ image, want string }{
		{"tagger.dev/missing", `Image "missing" not found in namespace "ns1"`},
		{"tagger.dev/empty", `Image "empty" in namespace "ns1" has no generation yet`},
		{"empty", `Image "empty" in namespace "ns1" has no generation yet`},
		{"tagger.dev/app:v1", "takes no tag"},
		{"tagger.dev/a/b", "takes no tag"},
	} {
		t.Run(tc.image, func(t *testing.T) {
			req := podRequest(t, &corev1.Pod{Spec: corev1.PodSpec{
				Containers: []corev1.Container{{Name: "ok", Image: "app"}, {Name: "bad", Image: tc.image}}}})
			resp := h.Review(context.Background(), req)
			if resp.Allowed || resp.Patch != nil {
				t.Fatalf("want refused, got %+v", resp)
			}
			if !strings.Contains(resp.Result.Message, tc.want) || !strings.Contains(resp.Result.Message, `container "bad"`) {
				t.Errorf("message %q, want it to contain %q and the container", resp.Result.Message, tc.want)
			}
			if resp.Result.Code != http.StatusForbidden {
				t.Errorf("code %d", resp.Result.Code)
			}
		})
	}
}

func TestEphemeralContainers(t *testing.T) {
	h := &Handler{Images: images}
	old := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns1"},
		Spec: corev1.PodSpec{
			Containers:          []corev1.Container{{Name: "main", Image: "app"}}, // left alone before the Image existed
			EphemeralContainers: []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debug1", Image: "tool"}}},
		}}
	pod := old.DeepCopy()
	pod.Spec.EphemeralContainers = append(pod.Spec.EphemeralContainers,
		corev1.EphemeralContainer{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debug2", Image: "tool"}})
	req := podRequest(t, pod)
	oldRaw, _ := json.Marshal(old)
	req.Operation, req.SubResource, req.OldObject = admissionv1.Update, "ephemeralcontainers", runtime.RawExtension{Raw: oldRaw}
	resp := h.Review(context.Background(), req)
	got := apply(t, req, resp)
	if got.Spec.EphemeralContainers[0].Image != "tool" {
		t.Errorf("existing ephemeral container changed: %s", got.Spec.EphemeralContainers[0].Image)
	}
	if got.Spec.EphemeralContainers[1].Image != toolRef {
		t.Errorf("new ephemeral container: %s, want %s", got.Spec.EphemeralContainers[1].Image, toolRef)
	}
	if got.Spec.Containers[0].Image != "app" {
		t.Errorf("containers changed through ephemeralcontainers: %s", got.Spec.Containers[0].Image)
	}
	if strings.Contains(string(resp.Patch), "annotations") || strings.Contains(string(resp.Patch), "imagePullSecrets") {
		t.Errorf("patch touches what the subresource drops: %s", resp.Patch)
	}

	req.OldObject = runtime.RawExtension{}
	pod.Spec.EphemeralContainers[0].Image = "tagger.dev/missing"
	req.Object.Raw, _ = json.Marshal(pod)
	resp = h.Review(context.Background(), req)
	if resp.Allowed || !strings.Contains(resp.Result.Message, `Image "missing"`) {
		t.Errorf("want refusal naming the Image, got %+v", resp)
	}
}

type fakeMirrors struct{ m *importer.Mirror }

func (f fakeMirrors) Mirror(context.Context, string, string) (*importer.Mirror, error) {
	return f.m, nil
}

func TestPullSecret(t *testing.T) {
	client := fake.NewClientset()
	mirror := &importer.Mirror{Repository: "mirror.example/ns1/app", Credential: &importer.Credential{Username: "u", Password: "p"}}
	h := &Handler{Images: images, Mirrors: fakeMirrors{mirror}, PullSecrets: &ClusterPullSecrets{Client: client}}
	req := podRequest(t, &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "app"}, {Name: "t", Image: "tool"}}}})
	got := apply(t, req, h.Review(context.Background(), req))
	if len(got.Spec.ImagePullSecrets) != 1 || got.Spec.ImagePullSecrets[0].Name != PullSecretName {
		t.Fatalf("imagePullSecrets %v", got.Spec.ImagePullSecrets)
	}
	s, err := client.CoreV1().Secrets("ns1").Get(context.Background(), PullSecretName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s.Type != corev1.SecretTypeDockerConfigJson || !bytes.Contains(s.Data[corev1.DockerConfigJsonKey], []byte(`"mirror.example":{"username":"u","password":"p","auth":"dTpw"}`)) {
		t.Errorf("secret %s %s", s.Type, s.Data[corev1.DockerConfigJsonKey])
	}

	// A pod that already lists other secrets keeps them; the credentials follow the mirror's.
	mirror.Credential.Password = "p2"
	req = podRequest(t, &corev1.Pod{Spec: corev1.PodSpec{ImagePullSecrets: []corev1.LocalObjectReference{{Name: "mine"}},
		Containers: []corev1.Container{{Name: "c", Image: "app"}}}})
	got = apply(t, req, h.Review(context.Background(), req))
	if len(got.Spec.ImagePullSecrets) != 2 || got.Spec.ImagePullSecrets[1].Name != PullSecretName {
		t.Errorf("imagePullSecrets %v", got.Spec.ImagePullSecrets)
	}
	s, _ = client.CoreV1().Secrets("ns1").Get(context.Background(), PullSecretName, metav1.GetOptions{})
	if !bytes.Contains(s.Data[corev1.DockerConfigJsonKey], []byte(`"password":"p2"`)) {
		t.Errorf("secret not updated: %s", s.Data[corev1.DockerConfigJsonKey])
	}

	// Without credentials, or for a generation outside the mirror, no secret.
	h.Mirrors = fakeMirrors{&importer.Mirror{Repository: "mirror.example/ns1/app"}}
	req = podRequest(t, &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "app"}}}})
	if got = apply(t, req, h.Review(context.Background(), req)); len(got.Spec.ImagePullSecrets) != 0 {
		t.Errorf("imagePullSecrets %v", got.Spec.ImagePullSecrets)
	}

	// A dry run names the Secret and writes nothing.
	dry := true
	empty := fake.NewClientset()
	h = &Handler{Images: images, Mirrors: fakeMirrors{mirror}, PullSecrets: &ClusterPullSecrets{Client: empty}}
	req = podRequest(t, &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "app"}}}})
	req.DryRun = &dry
	if got = apply(t, req, h.Review(context.Background(), req)); len(got.Spec.ImagePullSecrets) != 1 {
		t.Errorf("dry run: imagePullSecrets %v", got.Spec.ImagePullSecrets)
	}
	if l, _ := empty.CoreV1().Secrets("ns1").List(context.Background(), metav1.ListOptions{}); len(l.Items) != 0 {
		t.Errorf("dry run wrote %d Secrets", len(l.Items))
	}
	req.DryRun = nil

	// A Secret of that name Tagger does not own is not overwritten.
	other := fake.NewClientset(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: PullSecretName, Namespace: "ns1"}})
	h = &Handler{Images: images, Mirrors: fakeMirrors{mirror}, PullSecrets: &ClusterPullSecrets{Client: other}}
	if resp := h.Review(context.Background(), req); resp.Allowed || !strings.Contains(resp.Result.Message, "not managed by Tagger") {
		t.Errorf("got %+v", resp)
	}
}

func TestServeHTTP(t *testing.T) {
	pki := newTestPKI(t)
	srv := pki.server(t, &Handler{Images: images, Callers: &Callers{CA: pki, Names: []string{DefaultCallerName}}})
	client := pki.client(t, DefaultCallerName, pki.ca)
	req := podRequest(t, &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "app"}}}})
	body, _ := json.Marshal(&admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"}, Request: req})
	resp, err := client.Post(srv.URL, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out admissionv1.AdmissionReview
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	if out.Kind != "AdmissionReview" || out.APIVersion != "admission.k8s.io/v1" || out.Response == nil || out.Response.UID != "uid-1" {
		t.Fatalf("response %+v", out)
	}
	if got := apply(t, req, out.Response); got.Spec.Containers[0].Image != appRef {
		t.Errorf("image %s", got.Spec.Containers[0].Image)
	}
	if r, _ := client.Post(srv.URL, "application/json", strings.NewReader("{}")); r.StatusCode != http.StatusBadRequest {
		t.Errorf("review without request: %d", r.StatusCode)
	}
}

func TestPodUpdateResolvesChangedImages(t *testing.T) {
	h := &Handler{Images: images}
	old := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "keep", Image: appRef}, {Name: "c", Image: "nginx:1.27"}}}}
	old.Annotations = map[string]string{ResolvedAnnotation: `{"keep":{"from":"app","image":"` + appRef + `"}}`}
	pod := old.DeepCopy()
	pod.Spec.Containers[1].Image = "app" // kubectl set image pod/x c=app
	req := podRequest(t, pod)
	req.Operation = admissionv1.Update
	oldRaw, err := json.Marshal(old)
	if err != nil {
		t.Fatal(err)
	}
	req.OldObject.Raw = oldRaw
	got := apply(t, req, h.Review(context.Background(), req))
	if got.Spec.Containers[1].Image != appRef || got.Spec.Containers[0].Image != appRef {
		t.Fatalf("images %v", got.Spec.Containers)
	}
	var rec map[string]Resolved
	if err := json.Unmarshal([]byte(got.Annotations[ResolvedAnnotation]), &rec); err != nil || len(rec) != 2 || rec["c"].From != "app" {
		t.Fatalf("annotation %v %v", rec, err)
	}
}
