package caddywebhook

import (
	"encoding/json"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// FuzzCaddyfile feeds arbitrary blocks to every parser of the plugin: no
// panic, and what parses survives JSON encoding (what `caddy adapt` does).
func FuzzCaddyfile(f *testing.F) {
	for _, s := range []string{
		"webhook_ingest {\n access_key k1 k2\n client acme key interval 1m\n interval 1h\n max_body 10MB\n scope staging\n}",
		"webhook_ingest {\n client acme\n}",
		"webhook_ingest {\n access_key k\n client acme new previous old previous older interval 1m\n}",
		"webhooks {\n storage_dir /x\n workers 4\n retry 1s 1m\n subscription s {\n url https://a\n events *\n secret_header X-S v\n envelope data\n }\n}",
		"webhooks {\n subscription {\n}\n}",
		"webhooks {\n subscription s {\n url https://a\n events *\n signing_secret whsec_new whsec_old\n }\n}",
		"webhooks {\n min_free_space off\n workers 2\n}",
		"webhooks {\n min_free_space 1GiB\n}",
		"webhooks {\n sync_writes\n allow_private_targets\n}",
		"webhooks {\n encryption_key AQEBAQEBAQEBAQEBAQEBAQ== AgICAgICAgICAgICAgICAgICAgICAgIC\n}",
		"webhook_publish {\n max_body 1KB\n}",
		"webhook_api {\n dialect doshii\n tenant {http.auth.user.id}\n verify\n}",
		"webhook_api {\n dialect\n}",
		"webhook_api {\n dialect tiki\n max_webhooks off\n max_body 8KB\n}",
		"webhook_api {\n dialect tiki\n max_webhooks 20\n}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, input string) {
		tokens, err := caddyfile.Tokenize([]byte(input), "Caddyfile")
		if err != nil || len(tokens) == 0 {
			return
		}
		for _, u := range []caddyfile.Unmarshaler{new(Ingest), new(App), new(Publish), new(API)} {
			d := caddyfile.NewDispenser(tokens)
			if u.UnmarshalCaddyfile(d) == nil {
				if _, err := jsonMarshal(u); err != nil {
					t.Fatalf("%T parsed but does not encode: %v", u, err)
				}
				if a, ok := u.(*App); ok {
					_, _, _ = a.encryptionKeys() // decodes the keys: no panic
				}
			}
		}
	})
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }
