package ingest

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/net/http/httpguts"

	"github.com/hookgate/caddy-webhook/internal/httpbody"
)

// DefaultMaxBody is the largest push body accepted when none is configured.
const DefaultMaxBody = 10 << 20

// Client is one pushing client: a name for logs and the upstream, its key
// (sent as X-Webhook-Token) and its push window length (0 = no window).
type Client struct {
	Name string
	Key  string
	// PreviousKeys are accepted as well while the client's key is rotated.
	PreviousKeys []string
	Interval     time.Duration
	// previousKey: this copy of the client is the one found by a previous
	// key (see Answer.PreviousKey).
	previousKey bool
	// window names the client's push window and lease in the store: its
	// name, qualified by the gate's scope if it has one.
	window string
	lease  *Lease
}

// Config is everything a Gate needs to know about keys and limits.
type Config struct {
	// AccessKeys are accepted as "Authorization: Token <key>"; several allow
	// rotation without downtime.
	AccessKeys []string
	Clients    []Client
	// MaxBody bounds the push body in bytes; 0 means DefaultMaxBody.
	MaxBody int64
	// Scope separates push windows: gates on one store share a client's
	// window (and its one-push-at-a-time lease) when they have the same
	// scope and the client the same name. "" is the default scope.
	Scope string
}

type digest = [sha256.Size]byte

// Gate decides whether a push may go upstream, and what to answer once the
// upstream has spoken. It is safe for concurrent use.
type Gate struct {
	accessKeys []digest
	clients    map[digest]Client
	windows    WindowStore
	clock      Clock
	maxBody    int64
}

// NewGate checks cfg and builds a Gate over a window store. leases must be
// shared with every other Gate on the same store (see Leases).
func NewGate(cfg Config, windows WindowStore, leases *Leases, clock Clock) (*Gate, error) {
	if windows == nil || leases == nil || clock == nil {
		return nil, errors.New("ingest: window store, leases and clock are required")
	}
	g := &Gate{
		clients: make(map[digest]Client, len(cfg.Clients)),
		windows: windows,
		clock:   clock,
		maxBody: cfg.MaxBody,
	}
	if g.maxBody == 0 {
		g.maxBody = DefaultMaxBody
	}
	if g.maxBody < 0 {
		return nil, fmt.Errorf("max_body must not be negative")
	}
	if len(cfg.AccessKeys) == 0 {
		return nil, errors.New("at least one access_key is required")
	}
	for i, k := range cfg.AccessKeys {
		if err := checkKey(k); err != nil {
			return nil, fmt.Errorf("access_key #%d %v", i+1, err)
		}
		g.accessKeys = append(g.accessKeys, sha256.Sum256([]byte(k)))
	}
	if len(cfg.Clients) == 0 {
		return nil, errors.New("at least one client is required")
	}
	if strings.ContainsRune(cfg.Scope, 0) {
		return nil, errors.New("scope must not contain a NUL character")
	}
	// It labels metrics, whose values must be UTF-8.
	if !utf8.ValidString(cfg.Scope) {
		return nil, errors.New("scope must be valid UTF-8")
	}
	names := make(map[string]bool, len(cfg.Clients))
	for _, c := range cfg.Clients {
		c.window = WindowID(cfg.Scope, c.Name)
		c.lease = leases.For(c.window)
		if err := g.addClient(c, names); err != nil {
			return nil, err
		}
	}
	return g, nil
}

// addClient registers c; errors name the client, never its key.
func (g *Gate) addClient(c Client, names map[string]bool) error {
	switch {
	case c.Name == "":
		return errors.New("a client has no name")
	case strings.ContainsRune(c.Name, 0):
		return fmt.Errorf("client %q: the name must not contain a NUL character", c.Name)
	case !httpguts.ValidHeaderFieldValue(c.Name):
		return fmt.Errorf("client %q: the name is sent upstream as %s and must not contain control characters", c.Name, HeaderClient)
	case names[c.Name]:
		return fmt.Errorf("client %q is defined twice", c.Name)
	case c.Key == "":
		return fmt.Errorf("client %q has an empty key", c.Name)
	case c.Interval < 0:
		return fmt.Errorf("client %q: interval must not be negative", c.Name)
	}
	names[c.Name] = true
	if err := g.addKey(c, c.Key, "its key"); err != nil {
		return err
	}
	c.previousKey = true
	for i, k := range c.PreviousKeys {
		if err := g.addKey(c, k, fmt.Sprintf("previous key #%d", i+1)); err != nil {
			return err
		}
	}
	return nil
}

// addKey lets key identify c; which names the key in errors.
func (g *Gate) addKey(c Client, key, which string) error {
	if err := checkKey(key); err != nil {
		return fmt.Errorf("client %q: %s %v", c.Name, which, err)
	}
	d := sha256.Sum256([]byte(key))
	if other, dup := g.clients[d]; dup {
		if other.Name == c.Name {
			return fmt.Errorf("client %q: %s is given twice", c.Name, which)
		}
		return fmt.Errorf("clients %q and %q have the same key", other.Name, c.Name)
	}
	// Every integrator holds the access key; a client key equal to it
	// would let any of them push as this client.
	if slices.Contains(g.accessKeys, d) {
		return fmt.Errorf("client %q: %s is also an access_key; client keys must differ from the access keys", c.Name, which)
	}
	g.clients[d] = c
	return nil
}

// checkKey refuses a key no header can carry as it is: a push's keys
// are trimmed of surrounding whitespace, and a header value has no
// control characters, so such a key would never match. The usual cause
// is a key read from a file with its trailing newline. The error
// completes a phrase that names the key, and never quotes it.
func checkKey(key string) error {
	switch {
	case key == "":
		return errors.New("is empty")
	case strings.TrimSpace(key) != key:
		return errors.New("begins or ends with whitespace (a trailing newline from a file?), so no push could match it")
	case !httpguts.ValidHeaderFieldValue(key):
		return errors.New("contains control characters, so no push could match it")
	}
	return nil
}

// WindowID is the name under which a client's push window is stored and
// leased. The default scope keeps the bare client name, as windows stored
// before scopes existed are; other scopes are set apart by a NUL, which
// neither a scope nor a client name may contain, so no two pairs share an
// ID.
func WindowID(scope, client string) string {
	if scope == "" {
		return client
	}
	return scope + "\x00" + client
}

// Push is a push that passed every check and may be forwarded. Its client
// lease is held until Settle or Release.
type Push struct {
	Client   Client
	Body     []byte
	window   Window
	known    bool
	released bool
	gate     *Gate
}

// Admit runs the checks that precede forwarding, in the protocol's order.
// Exactly one of the results is non-nil.
func (g *Gate) Admit(r *http.Request) (*Push, *Answer) {
	if r.Method != http.MethodPost {
		return nil, reject(http.StatusMethodNotAllowed, OutcomeMethodNotAllowed, MsgMethodNotAllowed)
	}
	if !g.authorized(r.Header.Get("Authorization")) {
		return nil, reject(http.StatusForbidden, OutcomeNotAuthorized, MsgNotAuthorized)
	}
	token := strings.TrimSpace(r.Header.Get(HeaderToken))
	if token == "" {
		return nil, reject(http.StatusBadRequest, OutcomeMissingToken, MsgMissingToken)
	}
	// A map lookup by the key's SHA-256 leaks at most timing about the
	// digest, from which nothing about the key itself can be learned.
	client, ok := g.clients[sha256.Sum256([]byte(token))]
	if !ok {
		return nil, reject(http.StatusForbidden, OutcomeUnknownToken, MsgUnknownToken)
	}
	push, ans := g.openWindow(client)
	if ans != nil {
		return nil, ans
	}
	if g.windows.Writable() != nil {
		// Forwarded, the push would be in the upstream without its window.
		push.Release()
		ans := &Answer{Status: http.StatusServiceUnavailable, Outcome: OutcomeStoreFull, Envelope: push.window.envelope(false, MsgUnavailable)}
		ans.from(client)
		return nil, ans
	}
	body, ans := g.readBody(r)
	if ans != nil {
		ans.from(client)
		push.Release()
		return nil, ans
	}
	push.Body = body
	return push, nil
}

// openWindow takes the client's lease and checks its window.
func (g *Gate) openWindow(c Client) (*Push, *Answer) {
	free := c.lease.TryAcquire()
	w, known, err := c.lease.load(g.windows)
	if err != nil {
		if free {
			c.lease.Release()
		}
		ans := reject(http.StatusInternalServerError, OutcomeStoreError, MsgInternal)
		ans.from(c)
		return nil, ans
	}
	w = w.Under(c.Interval)
	now := g.clock.Now()
	var ans *Answer
	switch {
	case known && !w.Open(now):
		msg := MsgTooEarlyPrefix + FormatTime(w.NextPushAfter)
		ans = &Answer{Status: http.StatusBadRequest, Outcome: OutcomeTooEarly, Envelope: w.envelope(false, msg)}
	case !free:
		ans = &Answer{Status: http.StatusConflict, Outcome: OutcomeInProgress, Envelope: w.envelope(false, MsgInProgress)}
	}
	if ans != nil {
		if free {
			c.lease.Release()
		}
		ans.from(c)
		return nil, ans
	}
	return &Push{Client: c, window: w, known: known, gate: g}, nil
}

// readBody reads the whole body once, bounded by maxBody, and checks that
// it is a JSON object, compressed or not.
func (g *Gate) readBody(r *http.Request) ([]byte, *Answer) {
	if r.ContentLength > g.maxBody {
		return nil, reject(http.StatusRequestEntityTooLarge, OutcomeBodyTooLarge, MsgBodyTooLarge)
	}
	body, err := httpbody.ReadAtMost(r.Body, r.ContentLength, g.maxBody)
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge) || int64(len(body)) > g.maxBody:
		return nil, reject(http.StatusRequestEntityTooLarge, OutcomeBodyTooLarge, MsgBodyTooLarge)
	case err != nil:
		return nil, reject(http.StatusBadRequest, OutcomeBodyUnreadable, MsgBodyUnreadable)
	}
	plain, ans := decodeBody(r.Header, body, g.maxBody)
	if ans != nil {
		return nil, ans
	}
	if !isJSONObject(plain) {
		return nil, reject(http.StatusBadRequest, OutcomeBodyNotObject, MsgBodyNotObject)
	}
	return body, nil
}

// authorized checks "Token <key>" against every access key in constant
// time, without stopping at the first match.
func (g *Gate) authorized(header string) bool {
	scheme, key, ok := strings.Cut(strings.TrimSpace(header), " ")
	if !ok || !strings.EqualFold(scheme, "Token") {
		return false
	}
	key = strings.TrimSpace(key)
	if key == "" {
		return false
	}
	d := sha256.Sum256([]byte(key))
	match := 0
	for i := range g.accessKeys {
		match |= subtle.ConstantTimeCompare(d[:], g.accessKeys[i][:])
	}
	return match == 1
}

// Release gives the client's lease back without touching the window; use
// it when the push is abandoned (Settle releases by itself). Releasing
// again does nothing: the lease may already be another push's.
func (p *Push) Release() {
	if !p.released {
		p.released = true
		p.Client.lease.Release()
	}
}

// ForwardHeader rewrites the request headers for the upstream: the keys are
// removed and the client is named instead (replacing any spoofed value).
func ForwardHeader(h http.Header, client string) {
	h.Del("Authorization")
	h.Del(HeaderToken)
	h.Set(HeaderClient, client)
}

func reject(status int, o Outcome, msg string) *Answer {
	return &Answer{Status: status, Outcome: o, Envelope: Envelope{Error: msg}}
}
