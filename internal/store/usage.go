package store

import (
	"io/fs"
	"path/filepath"
)

// DiskUse is the space the database's files take on disk (see DiskUse).
func (db *DB) DiskUse() int64 { return DiskUse(db.dir) }

// DiskUse is the space the files under dir take on disk. Where the system
// says, it counts allocated blocks rather than file sizes: badger creates
// its write-ahead and value logs at their full size, sparse, so their
// sizes overstate what they hold by hundreds of MB.
func DiskUse(dir string) int64 {
	var total int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil // a file badger removed meanwhile: count the rest
		}
		if info, err := d.Info(); err == nil {
			total += allocated(info)
		}
		return nil
	})
	return total
}
