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

package plugin

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"tagger.dev/tagger/pkg/apis/tagger/v1beta1"
)

// hookRegistries are the values of hook-url --for.
var hookRegistries = []string{"dockerhub", "quay", "harbor", "distribution", "github", "generic"}

func (o *options) hookURLCommand() *cobra.Command {
	var (
		rotate bool
		target string
	)
	cmd := &cobra.Command{
		Use:   "hook-url",
		Short: "Print the URL a registry calls when a tag is pushed (creating the namespace's token if needed)",
		Long: `hook-url prints the registry webhook URL of the namespace: a registry that calls
it when a tag is pushed makes Tagger re-check, at once, the Images of the
namespace whose spec.from names that repository and tag (or whose tag policy
admits it). The URL carries the namespace's secret token, created the first
time; --rotate replaces it (URLs given out before stop working).

With --for, it prints what to enter in that registry instead: Harbor, the
distribution registry and GitHub get a URL without the token and send it in
a header or signature.`,
		Example: `  kubectl image hook-url -n shop
  kubectl image hook-url --for harbor
  kubectl image hook-url --rotate`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if target != "" && !contains(hookRegistries, target) {
				return fmt.Errorf("--for %q: want one of %s", target, strings.Join(hookRegistries, ", "))
			}
			c, _, ns, err := o.client()
			if err != nil {
				return err
			}
			hook, err := c.TaggerV1beta1().RegistryHooks(ns).Create(cmd.Context(), &v1beta1.RegistryHook{
				Spec: v1beta1.RegistryHookSpec{Rotate: rotate},
			}, metav1.CreateOptions{})
			if apierrors.IsNotFound(err) || apierrors.IsMethodNotSupported(err) {
				return fmt.Errorf("this Tagger server serves no registry hooks (registryhooks.tagger.dev): %w", err)
			}
			if err != nil {
				return err
			}
			fmt.Fprint(o.streams.Out, hookInstructions(target, hook.Status.URL, hook.Status.Token))
			return nil
		},
	}
	cmd.Flags().BoolVar(&rotate, "rotate", false, "Replace the namespace's token: URLs given out before stop working")
	cmd.Flags().StringVar(&target, "for", "", "Print the setup for this registry: "+strings.Join(hookRegistries, ", "))
	return cmd
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// hookInstructions is what to enter in a registry's webhook settings.
func hookInstructions(target, url, token string) string {
	bare := strings.TrimSuffix(url, "/"+token)
	switch target {
	case "harbor":
		return fmt.Sprintf(`Harbor: Project > Webhooks > New webhook
  Notify Type:     http
  Event Type:      Artifact pushed
  Payload Format:  Default (or CloudEvents)
  Endpoint URL:    %s
  Auth Header:     Bearer %s
`, bare, token)
	case "distribution":
		return fmt.Sprintf(`# distribution (registry:2/3) config.yml
notifications:
  endpoints:
  - name: tagger
    url: %s
    headers:
      Authorization: [Bearer %s]
    timeout: 5s
    threshold: 5
    backoff: 10s
    ignore:
      actions: [pull, mount, delete]
`, bare, token)
	case "github":
		return fmt.Sprintf(`GitHub: Settings > Webhooks > Add webhook (repository or organization)
  Payload URL:     %s
  Content type:    application/json
  Secret:          %s
  Events:          Registry packages
`, bare, token)
	case "dockerhub":
		return fmt.Sprintf("Docker Hub: repository > Webhooks > New webhook\n  Webhook URL:     %s\n", url)
	case "quay":
		return fmt.Sprintf("Quay: repository > Settings > Create Notification\n  When this event occurs:      Push to Repository\n  Then issue a notification:  Webhook POST\n  Webhook URL:                 %s\n", url)
	case "generic":
		return fmt.Sprintf("curl -X POST -H 'Content-Type: application/json' -d '{\"repository\": \"registry.example.com/org/app\", \"tag\": \"v1\"}' %s\n", url)
	}
	return url + "\n"
}
