// Renders a Nomad job's template `data` with Go's text/template (the engine consul-template and
// Nomad use) and a Nomad Variable given as JSON, for tests/unit/deploy/test_nomad_templates.py.
//
// Only the two Nomad Variable functions are stand-ins; they return what consul-template's do:
// nomadVar gives NomadVarItems, a map of key -> NomadVarItem *value* (a struct that prints its
// Value). consul-template executes with missingkey=zero unless a template sets
// error_on_missing_key, so a missing key is the zero struct, which `with` treats as true: the
// bug a real Nomad 1.10 agent showed (EMBARK_QUEUE__KAFKA__SASL_MECHANISM= rendered empty).
//
//	go run main.go VARIABLE_PATH VARIABLE_JSON|- < template
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/template"
)

// NomadVarItem mirrors consul-template's dependency.NomadVarItem (a value, not a pointer).
type NomadVarItem struct {
	Key, Value string
}

func (v NomadVarItem) String() string { return v.Value }

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: main VARIABLE_PATH VARIABLE_JSON|- < template")
		os.Exit(2)
	}
	path, raw := os.Args[1], os.Args[2]
	var items map[string]string
	exists := raw != "-"
	if exists {
		if err := json.Unmarshal([]byte(raw), &items); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}
	vars := map[string]NomadVarItem{}
	for k, v := range items {
		vars[k] = NomadVarItem{Key: k, Value: v}
	}
	funcs := template.FuncMap{
		"nomadVarExists": func(p string) bool { return exists && p == path },
		"nomadVar": func(p string) map[string]NomadVarItem {
			if p != path {
				return nil
			}
			return vars
		},
	}
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	tmpl, err := template.New("data").Option("missingkey=zero").Funcs(funcs).Parse(string(data))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := tmpl.Execute(os.Stdout, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
