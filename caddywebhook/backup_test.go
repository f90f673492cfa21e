package caddywebhook

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/dgraph-io/badger/v4"
	"go.uber.org/zap"

	"github.com/hookgate/caddy-webhook/internal/store"
)

// failingWriter is a response that takes limit bytes and then fails.
type failingWriter struct {
	*httptest.ResponseRecorder
	limit int
}

func (f *failingWriter) Write(p []byte) (int, error) {
	if f.Body.Len()+len(p) > f.limit {
		return 0, errors.New("client went away")
	}
	return f.ResponseRecorder.Write(p)
}

// A backup that fails before sending anything is a 500 with the reason;
// one that fails midway breaks the connection (http.ErrAbortHandler), so
// that the client cannot take what it got for a whole backup.
func TestBackupFailures(t *testing.T) {
	db, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for b := range 4 { // several records of the backup
		err := db.Update(func(txn *badger.Txn) error {
			for i := range 500 {
				if err := txn.Set(fmt.Appendf(nil, "delivery/q/%d/%d", b, i), make([]byte, 1000)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	a := adminAPI{logger: zap.NewNop()}
	o := &openStore{db: db}

	func() {
		defer func() {
			if r := recover(); r != http.ErrAbortHandler {
				t.Fatalf("a backup failing midway: recovered %v, want http.ErrAbortHandler", r)
			}
		}()
		_ = a.backup(&failingWriter{ResponseRecorder: httptest.NewRecorder(), limit: 1 << 20}, o)
	}()

	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	err = a.backup(httptest.NewRecorder(), o)
	var apiErr caddy.APIError
	if !errors.As(err, &apiErr) || apiErr.HTTPStatus != 500 || !strings.Contains(err.Error(), "backup failed") {
		t.Fatalf("a backup of a closed store: %v", err)
	}
}
