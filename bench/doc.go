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

// Package bench holds benchmarks comparing Tagger's importer with crane and
// skopeo when mirroring images between loopback registries, and push and
// pull through the images/push and images/pull subresources with skopeo
// copying the same OCI archive straight to and from the registry, and the
// cost of 1,000 scheduled Images in local mode (BenchmarkScheduledImages,
// minutes long; skipped with -short). It has no code of its own; run
// `go test -run - -bench . ./bench/`.
package bench
