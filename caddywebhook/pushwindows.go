package caddywebhook

import (
	"errors"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/hookgate/caddy-webhook/ingest"
)

// windowJSON is what operators see of a client's push window: as the
// running config's webhook_ingest handlers enforce it.
type windowJSON struct {
	Scope    string `json:"scope"`
	Client   string `json:"client"`
	LastUsed string `json:"last_used,omitempty"`
	// When the client may push again; where the config now gives the
	// client a shorter interval than the one that set the window, as
	// that interval shortens it.
	NextPushAfter string `json:"next_push_after,omitempty"`
	// The interval next_push_after follows from; absent when the backend
	// or an operator set it.
	Interval string `json:"interval,omitempty"`
	// Configured is false for a window whose client no webhook_ingest of
	// the running config names: nothing uses it any more, and DELETE
	// removes it.
	Configured bool `json:"configured"`
}

func (o *openStore) windowView(scope, client string, w ingest.Window) windowJSON {
	interval, configured := o.claims.Load().interval(ingest.WindowID(scope, client))
	if configured {
		w = w.Under(interval)
	}
	v := windowJSON{
		Scope: scope, Client: client, Configured: configured,
		LastUsed: ingest.FormatTime(w.LastUsed), NextPushAfter: ingest.FormatTime(w.NextPushAfter),
	}
	if w.Interval >= 0 {
		v.Interval = w.Interval.String()
	}
	return v
}

// windows serves /webhooks/windows and what is below it. The scope is a
// query parameter: the default scope is "", which a path cannot name.
func (a adminAPI) windows(w http.ResponseWriter, r *http.Request, o *openStore, rest []string) error {
	scope, scoped := r.URL.Query().Get("scope"), r.URL.Query().Has("scope")
	switch {
	case len(rest) == 0:
		return onlyGet(r, func() error { return listWindows(w, o, scope, scoped) })
	case len(rest) == 1 && rest[0] != "":
		switch r.Method {
		case http.MethodGet:
			return showWindow(w, o, scope, rest[0])
		case http.MethodDelete:
			return forgetWindow(w, o, scope, rest[0])
		}
		return apiErr(http.StatusMethodNotAllowed, "method not allowed; use GET or DELETE")
	case len(rest) == 2 && rest[0] != "" && rest[1] == "open":
		if r.Method != http.MethodPost {
			return apiErr(http.StatusMethodNotAllowed, "method not allowed; use POST")
		}
		return openWindow(w, o, scope, rest[0])
	}
	return apiErr(http.StatusNotFound, "no such route")
}

func showWindow(w http.ResponseWriter, o *openStore, scope, client string) error {
	win, ok, err := o.leases.Window(o.windows, scope, client)
	if err != nil {
		return apiErr(http.StatusInternalServerError, err.Error())
	}
	if !ok {
		return apiErr(http.StatusNotFound, "no push window on record for client "+client+inScope(scope))
	}
	return writeAdmin(w, o.windowView(scope, client, win))
}

func listWindows(w http.ResponseWriter, o *openStore, scope string, scoped bool) error {
	all, err := o.windows.Windows()
	if err != nil {
		return apiErr(http.StatusInternalServerError, err.Error())
	}
	out := make([]windowJSON, 0, len(all))
	for _, sw := range all {
		if !scoped || sw.Scope == scope {
			out = append(out, o.windowView(sw.Scope, sw.Client, sw.Window))
		}
	}
	return writeAdmin(w, out)
}

// openWindow lets a client push at once, through the lease the running
// handlers answer from, and says so in the log: it overrides the window
// the client was told.
func openWindow(w http.ResponseWriter, o *openStore, scope, client string) error {
	win, ok, err := o.leases.OpenNow(o.windows, scope, client, time.Now())
	if err := windowUnchanged(ok, err, scope, client); err != nil {
		return err
	}
	caddy.Log().Named("admin.api.webhooks").Info("push window opened by an operator",
		zap.String("scope", scope), zap.String("client", client), zap.String("next_push_after", ingest.FormatTime(win.NextPushAfter)))
	return writeAdmin(w, o.windowView(scope, client, win))
}

// forgetWindow deletes a client's window, typically one of a client no
// config names any more.
func forgetWindow(w http.ResponseWriter, o *openStore, scope, client string) error {
	ok, err := o.leases.Forget(o.windows, scope, client)
	if err := windowUnchanged(ok, err, scope, client); err != nil {
		return err
	}
	caddy.Log().Named("admin.api.webhooks").Info("push window deleted by an operator",
		zap.String("scope", scope), zap.String("client", client))
	return writeAdmin(w, map[string]any{"scope": scope, "client": client, "deleted": true})
}

// windowUnchanged is the answer to an opening or forgetting that did not
// happen, nil if it did: 409 while a push of the client is in flight, 404
// when the client has no window on record (nothing keeps it out).
func windowUnchanged(ok bool, err error, scope, client string) error {
	switch {
	case errors.Is(err, ingest.ErrPushInFlight):
		return apiErr(http.StatusConflict, err.Error())
	case err != nil:
		return apiErr(writeFailure(err), err.Error())
	case !ok:
		return apiErr(http.StatusNotFound, "no push window on record for client "+client+inScope(scope))
	}
	return nil
}

func inScope(scope string) string {
	if scope == "" {
		return ""
	}
	return " in scope " + scope
}
