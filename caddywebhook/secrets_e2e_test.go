package caddywebhook

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// A full run at DEBUG with access logs on (with the README's filter):
// pushes, deliveries in every authentication style (failing and
// succeeding), both registration dialects, credentials. No secret may
// appear in any log line, plain or Basic-encoded.
func TestNoSecretsInLogs(t *testing.T) {
	secrets := map[string]string{
		"access key":       "sec-access-key-1a2b",
		"client key":       "sec-client-key-3c4d",
		"secret header":    "sec-event-secret-5e6f",
		"token":            "sec-flybuy-token-7a8b",
		"basic password":   "sec-basic-pass-9c0d",
		"tiki secret":      "sec-tiki-secret-e1f2",
		"doshii token":     "sec-doshii-token-a3b4",
		"api password":     "sec-api-pass-c5d6",
		"signing (base64)": base64.StdEncoding.EncodeToString([]byte("sec-signing-key-0123456789abcdef")),
		"previous signing": base64.StdEncoding.EncodeToString([]byte("sec-previous-key-0123456789abcde")),
	}
	var fail atomic.Bool
	fail.Store(true)
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if fail.Load() {
			w.WriteHeader(500)
			return
		}
		w.WriteHeader(204)
	}))
	defer rcv.Close()
	up := newTestUpstream(t)
	hash := hashPassword(t, secrets["api password"])

	global, logFile := globalOptions(t, t.TempDir(), fmt.Sprintf(`allow_private_targets
		retry 50ms 50ms
		subscription all-styles {
			url %[1]s/all
			events *
			secret_header X-Event-Secret %[2]s
			token %[3]s
			signing_secret whsec_%[4]s whsec_%[6]s
		}
		subscription basic {
			url %[1]s/basic
			events *
			basic user %[5]s
		}`, rcv.URL, secrets["secret header"], secrets["token"], secrets["signing (base64)"], secrets["basic password"], secrets["previous signing"]))
	cfg := global + fmt.Sprintf(`
http://localhost:9080 {
	log {
		output file %[1]s.access
		format filter {
			request>headers>X-Webhook-Token delete
		}
	}
	handle /api/v1/webhook {
		webhook_ingest {
			access_key %[2]s
			client c %[3]s
		}
		reverse_proxy %[4]s
	}
	handle /publish {
		webhook_publish
	}
	handle /v1/webhooks* {
		basic_auth {
			seller %[5]s
		}
		webhook_api {
			dialect tiki
			tenant {http.auth.user.id}
		}
	}
	handle /partner/webhooks* {
		basic_auth {
			partner %[5]s
		}
		webhook_api {
			dialect doshii
			tenant {http.auth.user.id}
		}
	}
}
`, logFile, secrets["access key"], secrets["client key"], up.addr(), hash)
	tester := startCaddy(t, cfg)
	c := tester.Client

	doPush(t, tester, "POST", "/api/v1/webhook", authHeaders(secrets["access key"], secrets["client key"]), "{}")
	doPush(t, tester, "POST", "/api/v1/webhook", authHeaders("wrong", secrets["client key"]), "{}")
	doPush(t, tester, "POST", "/api/v1/webhook", authHeaders(secrets["access key"], "wrong"), "{}")
	fail.Store(false) // verification must pass
	call(t, c, "seller", secrets["api password"], "POST", "/v1/webhooks", `{"uri":"`+rcv.URL+`/tiki","event":"e"}`)
	call(t, c, "seller", secrets["api password"], "PUT", "/v1/webhooks/credentials", `{"id":"tiki-id","secret":"`+secrets["tiki secret"]+`"}`)
	call(t, c, "partner", secrets["api password"], "POST", "/partner/webhooks", `{"event":"e","webhookUrl":"`+rcv.URL+`/doshii","authenticationToken":"`+secrets["doshii token"]+`"}`)
	call(t, c, "partner", "wrong-password", "GET", "/partner/webhooks", "")
	fail.Store(true)
	for _, tenant := range []string{"", "seller", "partner"} {
		call(t, c, "", "", "POST", "/publish", `{"event":"e","tenant":"`+tenant+`","data":{}}`)
	}
	// Let some attempts fail, be retried and fail for good.
	waitFor(t, "failed deliveries", func() bool { return strings.Count(readFile(t, logFile), `"state":"failed"`) >= 4 })
	fail.Store(false)
	call(t, c, "seller", secrets["api password"], "POST", "/v1/webhooks/e/redeliver", "")
	call(t, c, "seller", secrets["api password"], "POST", "/v1/webhooks/e/test", "")
	waitFor(t, "the redelivery", func() bool { return strings.Contains(readFile(t, logFile), `"state":"delivered"`) })

	var all []string
	for name, s := range secrets {
		all = append(all, s)
		if name == "basic password" {
			all = append(all, base64.StdEncoding.EncodeToString([]byte("user:"+s)))
		}
	}
	all = append(all, base64.StdEncoding.EncodeToString([]byte("tiki-id:"+secrets["tiki secret"])),
		base64.StdEncoding.EncodeToString([]byte("seller:"+secrets["api password"])))
	assertNotInFile(t, logFile, all...)
	assertNotInFile(t, logFile+".access", all...)
}
