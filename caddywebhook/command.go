package caddywebhook

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"go.uber.org/zap/exp/zapslog"

	"github.com/hookgate/caddy-webhook/internal/store"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "webhooks-restore",
		Usage: "--config <path> [--adapter <name>] --input <path>",
		Short: "Restores the webhooks store from a backup",
		Long: `
Creates the store of the webhooks app from a backup taken with
GET /webhooks/backup on Caddy's admin endpoint: registrations, push
windows, queued deliveries and their records, as they were when the
backup was taken.

The store goes where the config's webhooks app keeps it (storage_dir,
or webhook under Caddy's data directory), which must be empty or not
exist: restore before Caddy starts with that config. With an
encryption_key in the config, the restored store is encrypted with it.
A backup cut short, or changed since it was taken (it carries a
checksum), is refused, and a failed restore leaves nothing.

--config
    The config Caddy will run with (required).

--adapter
    Its adapter, as for caddy run.

--input
    The backup file, or - for standard input (required).
`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.Flags().StringP("config", "c", "", "Configuration file Caddy will run with (required)")
			cmd.Flags().StringP("adapter", "a", "", "Name of config adapter to apply")
			cmd.Flags().StringP("input", "i", "", "Backup file to restore, or - for stdin (required)")
			cmd.RunE = caddycmd.WrapCommandFuncForCobra(cmdRestore)
		},
	})
}

func cmdRestore(fl caddycmd.Flags) (int, error) {
	configFile, input := fl.String("config"), fl.String("input")
	if configFile == "" || input == "" {
		return caddy.ExitCodeFailedStartup, errors.New("--config and --input are required")
	}
	cfg, _, _, err := caddycmd.LoadConfig(configFile, fl.String("adapter"))
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	setMemoryLimit()
	in := io.Reader(os.Stdin)
	if input != "-" {
		f, err := os.Open(input)
		if err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
		defer f.Close()
		in = f
	}
	dir, info, err := restoreFor(cfg, in)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	checked := "its checksum matched"
	if !info.Verified() {
		checked = "not verified: taken by a version without checksums"
	}
	fmt.Printf("restored the webhooks store into %s from a backup taken at %s (%s)\n", dir, info.At.Format("2006-01-02T15:04:05Z"), checked)
	return caddy.ExitCodeSuccess, nil
}

// setMemoryLimit sets GOMEMLIMIT from the container's memory limit (or
// the machine's memory), as caddy run does, unless GOMEMLIMIT is set.
// A restore writes as fast as the disk takes it; without a limit the Go
// heap may grow to twice what is live before it is collected, and the
// restore would be OOM-killed in a container where Caddy itself runs the
// restored store.
func setMemoryLimit() {
	logger := slog.New(zapslog.NewHandler(caddy.Log().Core(), zapslog.WithName("memlimit")))
	_, _ = memlimit.Set(
		memlimit.WithLogger(logger),
		memlimit.WithProvider(memlimit.ApplyFallback(memlimit.FromCgroup, memlimit.FromSystem)),
	)
}

// restoreFor restores the backup into the store the JSON config's
// webhooks app would open, encrypted with its key.
func restoreFor(cfg []byte, backup io.Reader) (string, store.BackupInfo, error) {
	var config struct {
		Apps struct {
			Webhooks App `json:"webhooks"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(cfg, &config); err != nil {
		return "", store.BackupInfo{}, fmt.Errorf("reading the config: %w", err)
	}
	app := &config.Apps.Webhooks
	dir, err := app.storageDir()
	if err != nil {
		return "", store.BackupInfo{}, err
	}
	// Previous keys do not matter here: the store is new.
	key, _, err := app.encryptionKeys()
	if err != nil {
		return "", store.BackupInfo{}, err
	}
	info, err := store.Restore(dir, store.Options{EncryptionKey: key, Logger: caddy.Log().Named("webhooks.store")}, backup)
	if err != nil {
		return "", store.BackupInfo{}, fmt.Errorf("restoring into %s: %w", dir, err)
	}
	return dir, info, nil
}
