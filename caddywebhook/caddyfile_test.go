package caddywebhook

import (
	"bytes"
	"encoding/base64"
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
		client initech initech-new previous {env.INITECH_OLD_KEY} interval 1m previous initech-older
		interval 1h
		max_body 2MB
		scope {env.STAGE}
	}`)
	var h Ingest
	if err := h.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	hour, ninety, minute := caddy.Duration(time.Hour), caddy.Duration(90*time.Second), caddy.Duration(time.Minute)
	want := Ingest{
		AccessKeys: []string{"{env.DIVVY_ACCESS_KEY}", "old-key", "third"},
		Clients: []IngestClient{
			{Name: "acme", Key: "acme-key", Interval: &ninety},
			{Name: "globex", Key: "globex-key"},
			{Name: "initech", Key: "initech-new", PreviousKeys: []string{"{env.INITECH_OLD_KEY}", "initech-older"}, Interval: &minute},
		},
		Interval: hour,
		MaxBody:  2_000_000,
		Scope:    "{env.STAGE}",
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
		{"client bad option", "webhook_ingest {\n access_key k\n client acme secret-key every 1h\n}", `client "acme": expected client <name> <client-key> [previous <key>]… [interval <duration>]`},
		{"client key after the key", "webhook_ingest {\n access_key k\n client acme secret-key secret-key2\n}", `client "acme": expected client <name>`},
		{"client previous without key", "webhook_ingest {\n access_key k\n client acme secret-key previous\n}", `client "acme": expected client <name>`},
		{"client interval twice", "webhook_ingest {\n access_key k\n client acme secret-key interval 1h interval 2h\n}", `client "acme": interval specified more than once`},
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
		{"scope without name", "webhook_ingest {\n access_key k\n client a b\n scope\n}", "scope needs one name"},
		{"scope with two names", "webhook_ingest {\n access_key k\n client a b\n scope x y\n}", "scope needs one name"},
		{"scope empty", "webhook_ingest {\n access_key k\n client a b\n scope \"\"\n}", "scope needs one name"},
		{"scope twice", "webhook_ingest {\n access_key k\n client a b\n scope x\n scope y\n}", "scope specified more than once"},
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
	err := a.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`webhooks {
		storage_dir /var/lib/hooks
		encryption_key {env.WEBHOOK_KEY} {env.OLD_WEBHOOK_KEY}
		min_free_space 1GiB
		workers 16
		endpoint_concurrency 4
		timeout 3s
		retry 1s 1m 1h
		disable_after 48h
		retention 3d
		allow_private_targets
		sync_writes
		subscription kinguin {
			url https://shop.example/hooks
			events product.update order.status
			secret_header X-Event-Secret {env.KINGUIN_SECRET}
			basic id secret
		}
		subscription flybuy {
			url https://flybuy.example/hook
			events *
			tenant acme
			location store-1
			token FFCPUG2A
			signing_secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw {env.OLD_SIGNING_SECRET}
			envelope data
		}
	}`))
	if err != nil {
		t.Fatal(err)
	}
	want := App{
		StorageDir: "/var/lib/hooks", EncryptionKey: "{env.WEBHOOK_KEY}", MinFreeSpace: 1 << 30, Workers: 16, EndpointConcurrency: 4,
		Timeout:      caddy.Duration(3 * time.Second),
		Retry:        []caddy.Duration{caddy.Duration(time.Second), caddy.Duration(time.Minute), caddy.Duration(time.Hour)},
		DisableAfter: caddy.Duration(48 * time.Hour), Retention: caddy.Duration(72 * time.Hour),
		AllowPrivateTargets: true, SyncWrites: true, PreviousEncryptionKeys: []string{"{env.OLD_WEBHOOK_KEY}"},
		Subscriptions: []SubscriptionConfig{
			{Name: "kinguin", URL: "https://shop.example/hooks", Events: []string{"product.update", "order.status"}, SecretHeader: "X-Event-Secret", Secret: "{env.KINGUIN_SECRET}",
				BasicUser: "id", BasicPassword: "secret"},
			{Name: "flybuy", URL: "https://flybuy.example/hook", Events: []string{"*"}, Tenant: "acme", Location: "store-1", Token: "FFCPUG2A",
				SigningSecret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", PreviousSigningSecrets: []string{"{env.OLD_SIGNING_SECRET}"}, Envelope: "data"},
		},
	}
	got, _ := json.Marshal(a)
	exp, _ := json.Marshal(want)
	if string(got) != string(exp) {
		t.Fatalf("got  %s\nwant %s", got, exp)
	}
	if _, err := a.deliveryConfig(); err == nil || !strings.Contains(err.Error(), "KINGUIN_SECRET") {
		t.Fatalf("unset placeholder: %v", err)
	}
	t.Setenv("KINGUIN_SECRET", "s3cret")
	if _, err := a.deliveryConfig(); err == nil || !strings.Contains(err.Error(), `subscription "flybuy": previous signing secret #1`) {
		t.Fatalf("unset placeholder in a previous signing secret: %v", err)
	}
	t.Setenv("OLD_SIGNING_SECRET", "whsec_cHJldmlvdXMtc2lnbmluZy1rZXktMjRi")
	cfg, err := a.deliveryConfig()
	if err != nil || cfg.Subscriptions[0].Auth.Secret != "s3cret" || cfg.Subscriptions[0].ID != "static:kinguin" {
		t.Fatalf("delivery config: %+v %v", cfg, err)
	}
	if got := cfg.Subscriptions[1].Auth.PreviousSigningSecrets; len(got) != 1 || got[0] != "whsec_cHJldmlvdXMtc2lnbmluZy1rZXktMjRi" {
		t.Fatalf("previous signing secrets %q", got)
	}
}

func TestUnmarshalWebhooksOptionErrors(t *testing.T) {
	sub := func(body string) string { return "webhooks {\n subscription s {\n" + body + "\n}\n}" }
	cases := map[string]string{
		"webhooks {\n storage_dir\n}":                                "wrong argument count",
		"webhooks {\n storage_dir a\n storage_dir b\n}":              "storage_dir specified more than once",
		"webhooks {\n storage /x\n}":                                 `unrecognized webhooks option "storage"`,
		"webhooks now":                                               "wrong argument count",
		"webhooks {\n workers 0\n}":                                  `invalid workers "0": want a positive number`,
		"webhooks {\n workers many\n}":                               `invalid workers "many"`,
		"webhooks {\n timeout 0s\n}":                                 "timeout must be positive",
		"webhooks {\n timeout -5s\n}":                                "timeout must not be negative",
		"webhooks {\n timeout soon\n}":                               `invalid timeout "soon"`,
		"webhooks {\n timeout\n}":                                    "wrong argument count",
		"webhooks {\n workers\n}":                                    "wrong argument count",
		"webhooks {\n disable_after 0\n}":                            "disable_after must be positive",
		"webhooks {\n retention -1h\n}":                              "retention must not be negative",
		"webhooks {\n encryption_key\n}":                             "encryption_key needs a key, then any previous ones",
		"webhooks {\n min_free_space\n}":                             "wrong argument count",
		"webhooks {\n min_free_space 0\n}":                           `invalid min_free_space "0"`,
		"webhooks {\n min_free_space lots\n}":                        `invalid min_free_space "lots"`,
		"webhooks {\n min_free_space off 1GB\n}":                     "wrong argument count",
		"webhooks {\n min_free_space off\n min_free_space 1GB\n}":    "min_free_space specified more than once",
		"webhooks {\n subscription s extra {\n url https://a\n }\n}": `subscription "s": unexpected argument "extra" before the block`,
		"webhooks {\n retry\n}":                                      "retry needs at least one delay",
		"webhooks {\n retry 5s soon\n}":                              `invalid retry delay "soon"`,
		"webhooks {\n allow_private_targets yes\n}":                  "wrong argument count",
		"webhooks {\n sync_writes on\n}":                             "wrong argument count",
		"webhooks {\n sync_writes\n sync_writes\n}":                  "sync_writes specified more than once",
		"webhooks {\n subscription {\n url http://x\n }\n}":          "subscription needs a name",
		sub("events *"):                                              `subscription "s": url is required`,
		sub("url https://x.example"):                                 `subscription "s": events is required`,
		sub("url https://x.example\n events"):                        `events needs at least one event`,
		sub("url a b"):                                               `subscription "s": url takes 1 argument(s)`,
		sub("secret_header X-Event-Secret"):                          `subscription "s": secret_header takes 2 argument(s)`,
		sub("basic only-id"):                                         `subscription "s": basic takes 2 argument(s)`,
		sub("signing_secret"):                                        `subscription "s": signing_secret needs a secret`,
		sub("signing_secret whsec_a\n signing_secret whsec_b"):       `subscription "s": signing_secret specified more than once`,
		sub("envelope json"):                                         `subscription "s": envelope must be "data"`,
		sub("url https://a\n url https://b"):                         `subscription "s": url specified more than once`,
		sub("headers X"):                                             `subscription "s": unrecognized option "headers"`,
		"webhooks {\n subscription s {\n url https://a\n events *\n }\n subscription s {\n url https://a\n events *\n }\n}": `subscription "s" is defined twice`,
	}
	for input, want := range cases {
		var a App
		err := a.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want %q", input, err, want)
		}
	}
}

// Provisioning rejects subscriptions that parse but cannot work; the
// error names the subscription, never a secret.
func TestDeliveryConfigErrors(t *testing.T) {
	cases := []struct {
		sc   SubscriptionConfig
		want string
	}{
		{SubscriptionConfig{Name: "a", URL: "ftp://x", Events: []string{"*"}}, `subscription "a": url must be an absolute http or https URL`},
		{SubscriptionConfig{Name: "a", URL: "https://x", Events: []string{"*"}, SigningSecret: "hunter2"}, `subscription "a": signing secret must start with "whsec_"`},
		{SubscriptionConfig{Name: "a", Events: []string{"*"}}, `subscription "a": url is required`},
		{SubscriptionConfig{Name: "a", URL: "https://x", Events: []string{"*"}, SigningSecret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", PreviousSigningSecrets: []string{"hunter2"}},
			`subscription "a": previous signing secret #1: must start with "whsec_"`},
		{SubscriptionConfig{Name: "a", URL: "https://x", Events: []string{"*"}, PreviousSigningSecrets: []string{"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}},
			`subscription "a": previous signing secrets need a current signing secret`},
		{SubscriptionConfig{Name: "a", URL: "https://x", Events: []string{"*"}, Token: "hunter2", BasicUser: "u", BasicPassword: "hunter2"},
			`subscription "a": token and basic both set the Authorization header: use one`},
		{SubscriptionConfig{URL: "https://x", Events: []string{"*"}}, "a subscription has no name"},
		{SubscriptionConfig{Name: "a", URL: "https://x", Events: []string{"*"}, SecretHeader: "X Event-Secret", Secret: "hunter2"},
			`subscription "a": secret_header "X Event-Secret" is not a valid header name`},
		{SubscriptionConfig{Name: "a", URL: "https://x", Events: []string{"*"}, SecretHeader: "Host", Secret: "hunter2"},
			`subscription "a": secret_header Host is set by the delivery itself`},
		{SubscriptionConfig{Name: "a", URL: "https://x", Events: []string{"*"}, Token: "hunter2\n"},
			`subscription "a": token must not contain control characters`},
	}
	for _, tc := range cases {
		a := App{Subscriptions: []SubscriptionConfig{tc.sc}}
		_, err := a.deliveryConfig()
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("err = %v, want %q", err, tc.want)
		}
	}
}

func TestUnmarshalPublish(t *testing.T) {
	var h Publish
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("webhook_publish {\n max_body 64KB\n}")); err != nil || h.MaxBody != 64000 {
		t.Fatalf("max_body %d, %v", h.MaxBody, err)
	}
	h = Publish{}
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("webhook_publish")); err != nil || h.MaxBody != 0 {
		t.Fatalf("bare directive: %d, %v", h.MaxBody, err)
	}
	for input, want := range map[string]string{
		"webhook_publish now":                                "takes no arguments",
		"webhook_publish {\n max_body big\n}":                `invalid max_body "big"`,
		"webhook_publish {\n tenant x\n}":                    `unrecognized webhook_publish option "tenant"`,
		"webhook_publish {\n max_body 1KB\n max_body 2KB\n}": "max_body specified more than once",
	} {
		var h Publish
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
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
		{Ingest{AccessKeys: []string{"x", ""}, Clients: []IngestClient{{Name: "a", Key: "k"}}}, "access_key #2 is empty"},
		{Ingest{AccessKeys: []string{"x"}, Clients: []IngestClient{{Name: "a", Key: ""}}}, `client "a": key is empty`},
		{Ingest{AccessKeys: []string{"x"}, Clients: []IngestClient{{Name: "a", Key: "k", PreviousKeys: []string{"{env.WEBHOOK_TEST_UNSET}"}}}},
			`client "a": previous key #1: evaluated placeholder {env.WEBHOOK_TEST_UNSET} is empty`},
		{Ingest{AccessKeys: []string{"x"}, Clients: []IngestClient{{Name: "a", Key: "k", PreviousKeys: []string{"k0", ""}}}}, `client "a": previous key #2 is empty`},
		{Ingest{AccessKeys: []string{"x"}, Clients: []IngestClient{{Name: "a", Key: "k"}}, Interval: -1}, "interval must not be negative"},
		{Ingest{AccessKeys: []string{"x"}, Clients: []IngestClient{{Name: "a", Key: "k"}}, Scope: "{env.WEBHOOK_TEST_UNSET}"}, "scope: evaluated placeholder {env.WEBHOOK_TEST_UNSET} is empty"},
	}
	for _, tc := range cases {
		_, err := tc.h.gateConfig()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("err = %v, want %q", err, tc.want)
		}
	}
	t.Setenv("WEBHOOK_TEST_OLD_KEY", "old-key")
	h := Ingest{AccessKeys: []string{"x"}, Clients: []IngestClient{{Name: "a", Key: "k", PreviousKeys: []string{"{env.WEBHOOK_TEST_OLD_KEY}"}}}}
	cfg, err := h.gateConfig()
	if err != nil || len(cfg.Clients[0].PreviousKeys) != 1 || cfg.Clients[0].PreviousKeys[0] != "old-key" {
		t.Fatalf("previous keys resolved to %+v, %v", cfg.Clients, err)
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

func TestUnmarshalAPI(t *testing.T) {
	var h API
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("webhook_api {\n dialect doshii\n tenant {http.auth.user.id}\n verify\n max_body 16KB\n max_webhooks 50\n}"))
	if err != nil || h.Dialect != "doshii" || h.Tenant != "{http.auth.user.id}" || !h.Verify || h.MaxBody != 16000 || h.MaxWebhooks != 50 {
		t.Fatalf("%+v %v", h, err)
	}
	h = API{}
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("webhook_api {\n dialect tiki\n max_webhooks off\n}")); err != nil || h.MaxWebhooks != -1 {
		t.Fatalf("max_webhooks off: %+v %v", h, err)
	}
	for input, want := range map[string]string{
		"webhook_api":                                          "needs a dialect",
		"webhook_api tiki":                                     "takes no arguments",
		"webhook_api {\n dialect svix\n}":                      `unknown dialect "svix" (want tiki or doshii)`,
		"webhook_api {\n dialect\n}":                           "wrong argument count",
		"webhook_api {\n dialect tiki\n dialect doshii\n}":     "dialect specified more than once",
		"webhook_api {\n dialect tiki\n verify yes\n}":         "wrong argument count",
		"webhook_api {\n dialect tiki\n tenant\n}":             "wrong argument count",
		"webhook_api {\n dialect tiki\n prefix /v1\n}":         `unrecognized webhook_api option "prefix"`,
		"webhook_api {\n dialect tiki\n max_webhooks 0\n}":     `invalid max_webhooks "0": want a positive number`,
		"webhook_api {\n dialect tiki\n max_webhooks many\n}":  `invalid max_webhooks "many": want a positive number`,
		"webhook_api {\n dialect tiki\n max_webhooks\n}":       "wrong argument count",
		"webhook_api {\n dialect tiki\n max_webhooks 5 off\n}": "wrong argument count",
	} {
		var h API
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want %q", input, err, want)
		}
	}
}

// All three handlers run after authentication and before terminal
// handlers without an `order` line, whatever order a block lists them in.
func TestDirectiveOrder(t *testing.T) {
	src := `{
	webhooks {
		storage_dir /tmp/x
	}
}
http://:9999 {
	respond 204
	reverse_proxy 127.0.0.1:1
	webhook_api {
		dialect tiki
		tenant {http.auth.user.id}
	}
	webhook_publish
	webhook_ingest {
		access_key k
		client a b
	}
	forward_auth 127.0.0.1:2 {
		uri /auth
	}
	basic_auth {
		u $2a$14$5z6T58R7cGQ.dft4mMM0xOweKpV02/gVVfScelCoskPgD4Bda7J1u
	}
}`
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(src), nil)
	if err != nil {
		t.Fatal(err)
	}
	js := string(out)
	pos := func(h string) int {
		i := strings.Index(js, `"handler":"`+h+`"`)
		if i < 0 {
			t.Fatalf("%s missing:\n%s", h, js)
		}
		return i
	}
	auth := pos("authentication")
	// forward_auth adapts to a reverse_proxy with handle_response; the
	// first reverse_proxy is forward_auth, the second the real one.
	fwd := strings.Index(js, `"uri":"/auth"`)
	for _, h := range []string{"webhook_ingest", "webhook_publish"} {
		if p := pos(h); p < auth || p > fwd {
			t.Errorf("%s is not between basic_auth and forward_auth", h)
		}
	}
	if p := pos("webhook_api"); p < fwd || p > pos("static_response") {
		t.Errorf("webhook_api is not after forward_auth and before respond")
	}
	if pos("webhook_ingest") > strings.LastIndex(js, `"handler":"reverse_proxy"`) {
		t.Errorf("webhook_ingest after reverse_proxy")
	}
}

// Two webhooks blocks in the global options would each make an app; the
// second is refused rather than silently replacing the first.
func TestWebhooksOptionOnlyOnce(t *testing.T) {
	src := "{\n\twebhooks {\n\t\tworkers 4\n\t}\n\twebhooks {\n\t\tworkers 8\n\t}\n}\n:9999 {\n\twebhook_publish\n}\n"
	_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(src), map[string]any{"filename": "Caddyfile"})
	if err == nil || !strings.Contains(err.Error(), "the webhooks global option may appear only once") {
		t.Fatalf("err = %v", err)
	}
}

func TestMinFreeSpace(t *testing.T) {
	for input, want := range map[string]int64{"off": -1, "300MB": 300_000_000, "2GiB": 2 << 30} {
		var a App
		if err := a.UnmarshalCaddyfile(caddyfile.NewTestDispenser("webhooks {\n min_free_space " + input + "\n}")); err != nil {
			t.Fatalf("%s: %v", input, err)
		}
		if a.MinFreeSpace != want {
			t.Errorf("min_free_space %s = %d, want %d", input, a.MinFreeSpace, want)
		}
	}
	for set, want := range map[int64]int64{0: 256 << 20, -1: 0, 5 << 30: 5 << 30} {
		if got := (&App{MinFreeSpace: set}).minFreeSpace(); got != want {
			t.Errorf("MinFreeSpace %d resolves to %d, want %d", set, got, want)
		}
	}
}

func TestEncryptionKeyErrors(t *testing.T) {
	good := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32))
	short := base64.StdEncoding.EncodeToString([]byte("hunter2"))
	t.Setenv("E2E_EMPTY_KEY", "")
	cases := []struct {
		key      string
		previous []string
		want     string
	}{
		{"", []string{good}, "previous_encryption_keys need an encryption_key"},
		{short, nil, "webhooks: encryption_key: must decode to 16, 24 or 32 bytes, not 7"},
		{"hunter2!", nil, "webhooks: encryption_key: must be base64"},
		{"{env.E2E_EMPTY_KEY}", nil, "webhooks: encryption_key: "},
		{good, []string{base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{2}, 16)), short}, "previous encryption key #2: must decode to 16, 24 or 32 bytes"},
		{good, []string{good}, "previous encryption key #1 is the encryption_key itself"},
	}
	for _, tc := range cases {
		a := App{EncryptionKey: tc.key, PreviousEncryptionKeys: tc.previous}
		_, _, err := a.encryptionKeys()
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), good) {
			t.Errorf("err = %v, want %q", err, tc.want)
		}
	}
	a := App{EncryptionKey: good, PreviousEncryptionKeys: []string{base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{2}, 24))}}
	key, previous, err := a.encryptionKeys()
	if err != nil || !bytes.Equal(key, bytes.Repeat([]byte{1}, 32)) || len(previous) != 1 || !bytes.Equal(previous[0], bytes.Repeat([]byte{2}, 24)) {
		t.Fatalf("good keys: %v %v %v", key, previous, err)
	}
}
