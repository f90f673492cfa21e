package caddywebhook

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestUnmarshalIngest(t *testing.T) {
	d := caddyfile.NewTestDispenser(`webhook_ingest {
		access_key {env.DIVVY_ACCESS_KEY} old-key
		access_key third
		client acme acme-key interval 90s
		client globex globex-key
		interval 1h
		max_body 2MB
	}`)
	var h Ingest
	if err := h.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	hour, ninety := caddy.Duration(time.Hour), caddy.Duration(90*time.Second)
	want := Ingest{
		AccessKeys: []string{"{env.DIVVY_ACCESS_KEY}", "old-key", "third"},
		Clients: []IngestClient{
			{Name: "acme", Key: "acme-key", Interval: &ninety},
			{Name: "globex", Key: "globex-key"},
		},
		Interval: hour,
		MaxBody:  2_000_000,
	}
	got, _ := json.Marshal(h)
	exp, _ := json.Marshal(want)
	if string(got) != string(exp) {
		t.Fatalf("got  %s\nwant %s", got, exp)
	}
}

func TestUnmarshalIngestErrors(t *testing.T) {
	cases := []struct {
		name, input, want string
	}{
		{"argument", "webhook_ingest foo {\n access_key k\n client a b\n}", "takes no arguments"},
		{"client without key", "webhook_ingest {\n access_key k\n client acme\n}", `client "acme": missing client key`},
		{"client without anything", "webhook_ingest {\n access_key k\n client\n}", "client needs a name and a key"},
		{"client bad option", "webhook_ingest {\n access_key k\n client acme secret-key every 1h\n}", `client "acme": expected client <name> <client-key> [interval <duration>]`},
		{"client bad interval", "webhook_ingest {\n access_key k\n client acme secret-key interval soon\n}", `client "acme": invalid interval "soon"`},
		{"client negative interval", "webhook_ingest {\n access_key k\n client acme secret-key interval -1h\n}", "must not be negative"},
		{"access_key empty", "webhook_ingest {\n access_key\n client a b\n}", "access_key needs at least one key"},
		{"no access key", "webhook_ingest {\n client a b\n}", "needs at least one access_key"},
		{"no client", "webhook_ingest {\n access_key k\n}", "needs at least one client"},
		{"bad interval", "webhook_ingest {\n access_key k\n client a b\n interval often\n}", `invalid interval "often"`},
		{"interval twice", "webhook_ingest {\n access_key k\n client a b\n interval 1h\n interval 2h\n}", "interval specified more than once"},
		{"interval args", "webhook_ingest {\n access_key k\n client a b\n interval 1h 2h\n}", "wrong argument count"},
		{"bad max_body", "webhook_ingest {\n access_key k\n client a b\n max_body lots\n}", `invalid max_body "lots"`},
		{"zero max_body", "webhook_ingest {\n access_key k\n client a b\n max_body 0\n}", `invalid max_body "0"`},
		{"max_body twice", "webhook_ingest {\n access_key k\n client a b\n max_body 1MB\n max_body 2MB\n}", "max_body specified more than once"},
		{"unknown option", "webhook_ingest {\n access_key k\n client a b\n windows 1h\n}", `unrecognized webhook_ingest option "windows"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var h Ingest
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "secret-key") {
				t.Fatalf("error quotes a key: %v", err)
			}
		})
	}
}

func TestUnmarshalWebhooksOption(t *testing.T) {
	var a App
	if err := a.UnmarshalCaddyfile(caddyfile.NewTestDispenser("webhooks {\n storage_dir /var/lib/hooks\n}")); err != nil {
		t.Fatal(err)
	}
	if a.StorageDir != "/var/lib/hooks" {
		t.Fatalf("storage_dir = %q", a.StorageDir)
	}
	for input, want := range map[string]string{
		"webhooks {\n storage_dir\n}":                   "wrong argument count",
		"webhooks {\n storage_dir a\n storage_dir b\n}": "more than once",
		"webhooks {\n storage /x\n}":                    `unrecognized webhooks option "storage"`,
		"webhooks now":                                  "wrong argument count",
	} {
		var a App
		err := a.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want %q", input, err, want)
		}
	}
}

// Provisioning errors name the key's position or client, never its value.
func TestIngestProvisionErrors(t *testing.T) {
	t.Setenv("WEBHOOK_TEST_UNSET", "")
	cases := []struct {
		h    Ingest
		want string
	}{
		{Ingest{AccessKeys: []string{"{env.WEBHOOK_TEST_UNSET}"}, Clients: []IngestClient{{Name: "a", Key: "k"}}}, "access_key #1: evaluated placeholder {env.WEBHOOK_TEST_UNSET} is empty"},
		{Ingest{AccessKeys: []string{"x"}, Clients: []IngestClient{{Name: "a", Key: "{env.WEBHOOK_TEST_UNSET}"}}}, `client "a": key: evaluated placeholder {env.WEBHOOK_TEST_UNSET} is empty`},
		{Ingest{AccessKeys: []string{"{nope.placeholder}"}, Clients: []IngestClient{{Name: "a", Key: "k"}}}, "access_key #1"},
		{Ingest{AccessKeys: []string{"x"}, Clients: []IngestClient{{Name: "a", Key: "k"}}, Interval: -1}, "interval must not be negative"},
	}
	for _, tc := range cases {
		_, err := tc.h.gateConfig()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("err = %v, want %q", err, tc.want)
		}
	}
}

// Caddyfile.example adapts, and webhook_ingest lands before reverse_proxy
// without an `order` line.
func TestCaddyfileExampleAdapts(t *testing.T) {
	src, err := os.ReadFile("../Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(src, map[string]any{"filename": "Caddyfile.example"})
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) > 0 {
		t.Fatalf("warnings: %v", warnings)
	}
	js := string(out)
	ingestAt := strings.Index(js, `"handler":"webhook_ingest"`)
	proxyAt := strings.Index(js, `"handler":"reverse_proxy"`)
	if ingestAt < 0 || proxyAt < 0 || ingestAt > proxyAt {
		t.Fatalf("webhook_ingest must come before reverse_proxy:\n%s", js)
	}
	if !strings.Contains(js, `"webhooks":{`) {
		t.Fatalf("no webhooks app:\n%s", js)
	}
}
