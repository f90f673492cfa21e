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
		Usage: "--config <path> [--adapter <name>] --input <path> | --verify --input <path>",
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

--verify
    Read the backup through and check it as a restore would (its
    checksum, every entry) without restoring anything; --config is
    not needed. Exits 0 for a backup a restore would take.
`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.Flags().StringP("config", "c", "", "Configuration file Caddy will run with (required)")
			cmd.Flags().StringP("adapter", "a", "", "Name of config adapter to apply")
			cmd.Flags().StringP("input", "i", "", "Backup file to restore, or - for stdin (required)")
			cmd.Flags().Bool("verify", false, "Check the backup without restoring it")
			cmd.RunE = caddycmd.WrapCommandFuncForCobra(cmdRestore)
		},
	})
}

func cmdRestore(fl caddycmd.Flags) (int, error) {
	configFile, input, verify := fl.String("config"), fl.String("input"), fl.Bool("verify")
	if input == "" || (configFile == "" && !verify) {
		return caddy.ExitCodeFailedStartup, errors.New("--config and --input are required (--input alone with --verify)")
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
	if verify {
		info, err := store.VerifyBackup(in)
		if err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
		fmt.Printf("the backup is whole: %d entries, taken at %s (%s)\n", info.Entries, info.At.Format("2006-01-02T15:04:05Z"), checksumNote(info))
		return caddy.ExitCodeSuccess, nil
	}
	cfg, _, _, err := caddycmd.LoadConfig(configFile, fl.String("adapter"))
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	dir, info, err := restoreFor(cfg, in)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	fmt.Printf("restored %d entries into the webhooks store in %s from a backup taken at %s (%s)\n", info.Entries, dir, info.At.Format("2006-01-02T15:04:05Z"), checksumNote(info))
	return caddy.ExitCodeSuccess, nil
}

func checksumNote(info store.BackupInfo) string {
	if info.Verified() {
		return "its checksum matched"
	}
	return "not verified: taken by a version without checksums"
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
