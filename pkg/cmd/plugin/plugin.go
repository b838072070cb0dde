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

// Package plugin is "kubectl image": import, push, pull, list, rollback and
// rollforward of Tagger Images, with every standard kubectl flag.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"
	"golang.org/x/term"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"tagger.dev/tagger/pkg/apis/tagger/v1beta1"
	taggerclient "tagger.dev/tagger/pkg/generated/clientset/versioned"
	"tagger.dev/tagger/pkg/imagecopy"
)

// options are shared by every command.
type options struct {
	flags   *genericclioptions.ConfigFlags
	streams genericiooptions.IOStreams
	// quiet drops the server's warnings, for commands that report the
	// same thing as their error.
	quiet bool
}

func (o *options) config() (*rest.Config, string, error) {
	cfg, err := o.flags.ToRESTConfig()
	if err != nil {
		return nil, "", err
	}
	ns, _, err := o.flags.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return nil, "", err
	}
	// As kubectl prints them, not as log lines.
	cfg.WarningHandler = rest.NewWarningWriter(o.streams.ErrOut, rest.WarningWriterOptions{Deduplicate: true})
	if o.quiet {
		cfg.WarningHandler = rest.NoWarnings{}
	}
	return cfg, ns, nil
}

func (o *options) client() (taggerclient.Interface, *rest.Config, string, error) {
	cfg, ns, err := o.config()
	if err != nil {
		return nil, nil, "", err
	}
	c, err := taggerclient.NewForConfig(cfg)
	return c, cfg, ns, err
}

// progress returns where containers/image reports progress: the terminal,
// or nowhere.
func (o *options) progress() io.Writer {
	if f, ok := o.streams.ErrOut.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return f
	}
	return nil
}

// NewCommand returns "kubectl image".
func NewCommand(streams genericiooptions.IOStreams) *cobra.Command {
	o := &options{flags: genericclioptions.NewConfigFlags(true), streams: streams}
	cmd := &cobra.Command{
		Use:         "image",
		Annotations: map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl image"},
		Short:       "Import, push, pull and roll back Tagger Images",
		Long: `kubectl image works with Tagger Images (tagger.dev/v1beta1): the digests an image
resolved to, newest first ("generations"), and which one is current.

Everything goes through the Kubernetes API with your kubeconfig: no registry
credentials are needed. Push and pull move images blob by blob through the
images/push and images/pull subresources of the Image.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	cmd.SetOut(streams.Out)
	cmd.SetErr(streams.ErrOut)
	o.flags.AddFlags(cmd.PersistentFlags())
	cmd.AddCommand(o.importCommand(), o.pushCommand(), o.pullCommand(), o.listCommand(), o.rollCommand(true), o.rollCommand(false))
	cmd.AddCommand(o.hookURLCommand())
	return cmd
}

// notFound makes a missing Image an error that says what to do.
func notFound(err error, ns, name string) error {
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("Image %q not found in namespace %q: create it with \"kubectl image import %s --from REF\" or \"kubectl image push %s SOURCE\"", name, ns, name, name)
	}
	return err
}

func (o *options) importCommand() *cobra.Command {
	var from string
	var mirror, insecure bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "import NAME [--from REF] [--mirror] [--insecure]",
		Short: "Import a new generation into an Image and print its digest reference",
		Example: `  # Track nginx:1.27 in the Image "web" (created if missing), mirrored
  kubectl image import web --from docker.io/library/nginx:1.27 --mirror

  # Re-import from the Image's own spec.from
  kubectl image import web`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.quiet = true // a failed import is this command's error
			c, _, ns, err := o.client()
			if err != nil {
				return err
			}
			ii := &v1beta1.ImageImport{
				ObjectMeta: metav1.ObjectMeta{GenerateName: args[0] + "-"},
				Spec:       v1beta1.ImageImportSpec{TargetImage: args[0], From: from},
			}
			if cmd.Flags().Changed("mirror") {
				ii.Spec.Mirror = ptr.To(mirror)
			}
			if cmd.Flags().Changed("insecure") {
				ii.Spec.Insecure = ptr.To(insecure)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			created, err := c.TaggerV1beta1().ImageImports(ns).Create(ctx, ii, metav1.CreateOptions{})
			if err != nil {
				return err
			}
			cond := meta.FindStatusCondition(created.Status.Conditions, v1beta1.ConditionImported)
			if cond != nil && cond.Status == metav1.ConditionFalse && cond.Reason == v1beta1.ReasonProgressing {
				fmt.Fprintf(o.streams.ErrOut, "imageimport %s is still in progress (%s), waiting...\n", created.Name, cond.Message)
				if created, err = waitImport(ctx, c, ns, created); err != nil {
					return err
				}
				cond = meta.FindStatusCondition(created.Status.Conditions, v1beta1.ConditionImported)
			}
			if hr := created.Status.HashReference; hr != nil && cond != nil && cond.Status == metav1.ConditionTrue {
				fmt.Fprintln(o.streams.Out, hr.ImageReference)
				return nil
			}
			reason := "unknown"
			if cond != nil {
				reason = cond.Message
			}
			return fmt.Errorf("import %s of %s failed: %s (see kubectl get imageimport %s -o yaml)", created.Name, created.Spec.From, reason, created.Name)
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "Source image reference (default: the Image's spec.from).")
	cmd.Flags().BoolVar(&mirror, "mirror", false, "Copy the image into the mirror registry (default: the Image's spec.mirror).")
	cmd.Flags().BoolVar(&insecure, "insecure", false, "Skip TLS verification for the source (default: the Image's spec.insecure).")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Minute, "How long to wait for the import.")
	return cmd
}

// waitImport watches an import until it leaves Progressing.
func waitImport(ctx context.Context, c taggerclient.Interface, ns string, ii *v1beta1.ImageImport) (*v1beta1.ImageImport, error) {
	done := func(ii *v1beta1.ImageImport) bool {
		cond := meta.FindStatusCondition(ii.Status.Conditions, v1beta1.ConditionImported)
		return cond != nil && (cond.Status == metav1.ConditionTrue || cond.Reason != v1beta1.ReasonProgressing)
	}
	for {
		w, err := c.TaggerV1beta1().ImageImports(ns).Watch(ctx, metav1.ListOptions{
			FieldSelector: fields.OneTermEqualSelector("metadata.name", ii.Name).String(), ResourceVersion: ii.ResourceVersion,
		})
		if err != nil {
			return nil, err
		}
		for ev := range w.ResultChan() {
			if ev.Type == watch.Error {
				break
			}
			if got, ok := ev.Object.(*v1beta1.ImageImport); ok {
				ii = got
				if done(ii) {
					w.Stop()
					return ii, nil
				}
			}
		}
		w.Stop()
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("import %s still in progress: %w (follow it with kubectl wait --for=condition=Imported imageimport/%s)", ii.Name, err, ii.Name)
		}
		if ii, err = c.TaggerV1beta1().ImageImports(ns).Get(ctx, ii.Name, metav1.GetOptions{}); err != nil {
			return nil, err
		}
		if done(ii) {
			return ii, nil
		}
	}
}

func (o *options) pushCommand() *cobra.Command {
	var tag string
	var chunk int64
	cmd := &cobra.Command{
		Use:   "push NAME SOURCE",
		Short: "Push a local image into an Image's mirror repository as a new generation",
		Long: `Push copies SOURCE (every platform, digests unchanged) into the mirror registry
under the Image's repository, through the Image's images/push subresource, and
records it as the Image's newest generation. The Image is created if missing.

SOURCE is oci-archive:FILE, docker-archive:FILE, oci:DIR[:REF] or dir:DIR, or a
plain path (a directory is an OCI layout, a file an OCI or docker archive).`,
		Example: `  # Push an OCI archive (e.g. from "podman save --format oci-archive" or "docker buildx --output type=oci")
  kubectl image push app oci-archive:app.tar

  # Push a "docker save" archive into namespace prod
  kubectl image push -n prod app docker-archive:app.tar`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, cfg, ns, err := o.client()
			if err != nil {
				return err
			}
			if chunk == 0 {
				chunk = -1 // one request per blob
			}
			res, err := imagecopy.Push(cmd.Context(), imagecopy.PushOptions{
				Target:      imagecopy.Target{Config: cfg, Namespace: ns, Name: args[0]},
				CopyOptions: imagecopy.CopyOptions{ReportWriter: o.progress(), ChunkSize: chunk},
				Source:      args[1], Tag: tag,
			})
			if err != nil {
				return err
			}
			img, err := c.TaggerV1beta1().Images(ns).Get(cmd.Context(), args[0], metav1.GetOptions{})
			if err != nil {
				return err
			}
			for i, hr := range img.Status.HashReferences {
				if strings.HasSuffix(hr.ImageReference, "@"+res.Digest.String()) {
					fmt.Fprintf(o.streams.ErrOut, "pushed %s to image %s: generation %d\n", args[1], args[0], i)
					fmt.Fprintln(o.streams.Out, hr.ImageReference)
					if img.Spec.PinnedReference != "" {
						fmt.Fprintf(o.streams.ErrOut, "note: image %s is pinned to %s; \"kubectl image rollforward %s\" moves the pin towards the newest\n", args[0], img.Spec.PinnedReference, args[0])
					}
					return nil
				}
			}
			return fmt.Errorf("pushed %s, but image %s does not list it as a generation", res.Digest, args[0])
		},
	}
	cmd.Flags().StringVar(&tag, "tag", "latest", "Tag to move in the mirror repository.")
	cmd.Flags().Int64Var(&chunk, "chunk-size", imagecopy.DefaultChunkSize, "Upload blobs in requests of at most this many bytes (each request must finish within the API server's request timeout); 0 sends each blob in one request.")
	return cmd
}

func (o *options) pullCommand() *cobra.Command {
	var generation int
	var dgst string
	cmd := &cobra.Command{
		Use:   "pull NAME DEST [--generation N | --digest D]",
		Short: "Pull a generation of an Image to a local archive or directory",
		Long: `Pull copies a generation of the Image (the current one by default: the pinned
one after a rollback, else the newest; see "kubectl image list") from the mirror
registry, through the Image's images/pull subresource, to DEST: every platform,
digests unchanged.

DEST is oci-archive:FILE, oci:DIR[:REF], docker-archive:FILE (single-platform
images only) or dir:DIR; a plain path means oci-archive:PATH.`,
		Example: `  # The current generation, as an OCI archive
  kubectl image pull app app.tar

  # Generation 1 (the one before the newest), for "docker load"
  kubectl image pull app docker-archive:app.tar --generation 1

  # A generation by digest
  kubectl image pull app oci:app-dir --digest sha256:9f86d08...`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("generation") && dgst != "" {
				return fmt.Errorf("give --generation or --digest, not both")
			}
			c, cfg, ns, err := o.client()
			if err != nil {
				return err
			}
			img, err := c.TaggerV1beta1().Images(ns).Get(cmd.Context(), args[0], metav1.GetOptions{})
			if err != nil {
				return notFound(err, ns, args[0])
			}
			refs := img.Status.HashReferences
			if len(refs) == 0 {
				return fmt.Errorf("image %s has no generation yet: import or push one first", args[0])
			}
			var ref string
			if dgst != "" {
				for _, hr := range refs {
					if strings.HasSuffix(hr.ImageReference, "@"+dgst) {
						ref = hr.ImageReference
					}
				}
				if ref == "" {
					return fmt.Errorf("image %s has no generation %s (see kubectl image list %s)", args[0], dgst, args[0])
				}
			} else {
				if !cmd.Flags().Changed("generation") {
					if generation = v1beta1.CurrentGeneration(img); generation < 0 {
						return fmt.Errorf("image %s is pinned to %s, which is no longer among its generations: give --generation or --digest", args[0], img.Spec.PinnedReference)
					}
				}
				if generation < 0 || generation >= len(refs) {
					return fmt.Errorf("image %s has generations 0 to %d (see kubectl image list %s)", args[0], len(refs)-1, args[0])
				}
				ref = refs[generation].ImageReference
			}
			_, d, _ := strings.Cut(ref, "@")
			err = imagecopy.Pull(cmd.Context(), imagecopy.PullOptions{
				Target:      imagecopy.Target{Config: cfg, Namespace: ns, Name: args[0]},
				CopyOptions: imagecopy.CopyOptions{ReportWriter: o.progress()},
				Digest:      digest.Digest(d), Dest: args[1],
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(o.streams.ErrOut, "pulled %s to %s\n", ref, args[1])
			return nil
		},
	}
	cmd.Flags().IntVar(&generation, "generation", 0, "Generation to pull: 0 is the newest, 1 the one before, as \"kubectl image list\" numbers them (default: the current one).")
	cmd.Flags().StringVar(&dgst, "digest", "", "Digest of the generation to pull (sha256:...).")
	return cmd
}

func (o *options) listCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "list NAME",
		Aliases: []string{"history"},
		Short:   "List the generations of an Image, newest first, marking the current one",
		Example: `  kubectl image list app
  kubectl image history app -n prod`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, ns, err := o.client()
			if err != nil {
				return err
			}
			img, err := c.TaggerV1beta1().Images(ns).Get(cmd.Context(), args[0], metav1.GetOptions{})
			if err != nil {
				return notFound(err, ns, args[0])
			}
			tw := tabwriter.NewWriter(o.streams.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "GENERATION\tCURRENT\tIMPORTED\tFROM\tIMAGEREFERENCE")
			current := v1beta1.CurrentGeneration(img)
			for i, hr := range img.Status.HashReferences {
				cur := ""
				if i == current {
					cur = "*"
					if img.Spec.PinnedReference != "" {
						cur = "* (pinned)"
					}
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", i, cur, hr.ImportedAt.UTC().Format(time.RFC3339), hr.From, hr.ImageReference)
			}
			return tw.Flush()
		},
	}
}

// rollCommand is rollback (back=true) or rollforward.
func (o *options) rollCommand(back bool) *cobra.Command {
	use, short, example := "rollforward NAME", "Make the next newer generation current; at the newest, remove the pin", "  kubectl image rollforward app"
	if back {
		use, short, example = "rollback NAME", "Make the generation before the current one current, by pinning it", "  kubectl image rollback app\n  kubectl image list app    # the current generation is marked *"
	}
	return &cobra.Command{
		Use:     use,
		Short:   short,
		Long:    short + ".\n\nThe current generation is status.currentReference: spec.pinnedReference when set,\nelse the newest generation. Consumers read status.currentReference.",
		Example: example,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, ns, err := o.client()
			if err != nil {
				return err
			}
			images := c.TaggerV1beta1().Images(ns)
			var result *v1beta1.Image
			err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
				img, err := images.Get(cmd.Context(), args[0], metav1.GetOptions{})
				if err != nil {
					return notFound(err, ns, args[0])
				}
				pin, err := Roll(img, back)
				if err != nil {
					return err
				}
				img.Spec.PinnedReference, img.Spec.PinnedResolvedAt = pin.Reference, pin.ResolvedAt
				result, err = images.Update(cmd.Context(), img, metav1.UpdateOptions{})
				return err
			})
			if err != nil {
				return err
			}
			if result.Spec.PinnedReference == "" {
				fmt.Fprintf(o.streams.ErrOut, "image %s: the newest generation is current (no pin)\n", args[0])
			} else {
				fmt.Fprintf(o.streams.ErrOut, "image %s: generation %d is current (pinned)\n", args[0], v1beta1.CurrentGeneration(result))
			}
			fmt.Fprintln(o.streams.Out, result.Status.CurrentReference)
			return nil
		},
	}
}

// Pin is a value of spec.pinnedReference and spec.pinnedResolvedAt; the
// zero Pin is no pin (the newest generation is current).
type Pin struct {
	Reference  string
	ResolvedAt *metav1.MicroTime
}

// pinOf returns the pin that names generation i of img alone, even when
// its reference appears more than once.
func pinOf(img *v1beta1.Image, i int) Pin {
	hr := img.Status.HashReferences[i]
	at := v1beta1.GenerationTime(hr)
	return Pin{Reference: hr.ImageReference, ResolvedAt: &at}
}

// Roll returns the pin that rolls img back (to the generation older than
// the current one) or forward (to the next newer one; no pin at the
// newest). It moves one generation at a time, so it visits every
// generation, whatever digests the history repeats.
func Roll(img *v1beta1.Image, back bool) (Pin, error) {
	refs := img.Status.HashReferences
	if len(refs) == 0 {
		return Pin{}, fmt.Errorf("image %s has no generation yet", img.Name)
	}
	cur := v1beta1.CurrentGeneration(img)
	if cur < 0 {
		return Pin{}, fmt.Errorf("image %s is pinned to %s, which is no longer among its generations: clear the pin with kubectl patch image %s --type=merge -p '{\"spec\":{\"pinnedReference\":null}}'", img.Name, img.Spec.PinnedReference, img.Name)
	}
	if back {
		if cur+1 >= len(refs) {
			return Pin{}, fmt.Errorf("image %s: generation %d is the oldest kept, there is nothing to roll back to", img.Name, cur)
		}
		return pinOf(img, cur+1), nil
	}
	if cur == 0 {
		if img.Spec.PinnedReference == "" {
			return Pin{}, errors.New("image " + img.Name + ": the newest generation is already current")
		}
		return Pin{}, nil
	}
	if cur == 1 {
		return Pin{}, nil
	}
	return pinOf(img, cur-1), nil
}
