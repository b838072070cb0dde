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
// Command models-schema prints the OpenAPI v2 definitions of Tagger's types
// in the form applyconfiguration-gen reads (--applyconfig-openapi-schema).
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"k8s.io/kube-openapi/pkg/common"
	"k8s.io/kube-openapi/pkg/validation/spec"

	"tagger.dev/tagger/pkg/generated/openapi"
)

func main() {
	if err := output(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func output() error {
	ref := func(name string) spec.Ref {
		return spec.MustCreateRef("#/definitions/" + modelName(name))
	}
	defs := openapi.GetOpenAPIDefinitions(ref)
	schemas := make(map[string]spec.Schema, len(defs))
	for name, def := range defs {
		// applyconfiguration-gen reads OpenAPI v2; prefer an embedded v2 schema.
		if v2, ok := def.Schema.Extensions[common.ExtensionV2Schema].(spec.Schema); ok {
			schemas[modelName(name)] = v2
			continue
		}
		schemas[modelName(name)] = def.Schema
	}
	data, err := json.Marshal(&spec.Swagger{SwaggerProps: spec.SwaggerProps{
		Swagger:     "2.0",
		Definitions: schemas,
		Info:        &spec.Info{InfoProps: spec.InfoProps{Title: "Tagger", Version: "unversioned"}},
	}})
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(data)
	return err
}

// modelName turns a Go package path name ("k8s.io/api/core/v1.Pod") into the
// reverse-DNS model name ("io.k8s.api.core.v1.Pod"); names that are already
// model names pass through.
func modelName(name string) string {
	parts := strings.Split(name, "/")
	if len(parts) > 1 && strings.Contains(parts[0], ".") {
		host := strings.Split(parts[0], ".")
		for i, j := 0, len(host)-1; i < j; i, j = i+1, j-1 {
			host[i], host[j] = host[j], host[i]
		}
		parts[0] = strings.Join(host, ".")
	}
	return strings.Join(parts, ".")
}
