package caddywebhook

import (
	"fmt"
	"io"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// backup streams a consistent copy of the store: GET /webhooks/backup on
// the admin endpoint. It is taken from one snapshot while Caddy goes on
// serving, in badger's backup format with an end entry that
// `caddy webhooks-restore` requires, holding the checksum it verifies. It holds every secret the store
// does, in the clear, encrypted store or not.
func (a adminAPI) backup(w http.ResponseWriter, o *openStore) error {
	now := time.Now()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="webhooks-%s.bak"`, now.UTC().Format("20060102T150405Z")))
	w.Header().Set("Cache-Control", "no-store")
	cw := &countingWriter{w: w}
	info, err := o.db.Backup(cw, now)
	if err != nil {
		a.logger.Error("backup failed", zap.String("dir", o.db.Dir()), zap.Int64("bytes_sent", cw.n), zap.Error(err))
		if cw.n == 0 {
			return apiErr(http.StatusInternalServerError, "backup failed: "+err.Error())
		}
		// The status is sent: break the connection, so that the client
		// sees a failed transfer rather than a short file (which the
		// restore would refuse anyway).
		panic(http.ErrAbortHandler)
	}
	a.logger.Info("backup taken", zap.String("dir", o.db.Dir()), zap.Int64("bytes", cw.n), zap.Uint64("version", info.Version), zap.String("sha256", info.SHA256))
	return nil
}

// countingWriter counts what went through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
