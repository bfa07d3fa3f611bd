package freeport

import (
	"os"
	"path/filepath"
	"sync"
	"syscall"
)

// lockFile is the file whose bytes stand for ports: byte p locked by a
// process means that process handed out port p. fcntl record locks belong
// to the process and the kernel drops them when it exits, however it
// exits, so a crashed test leaves nothing reserved. Closing any descriptor
// of the file would drop all of this process's locks, so it is opened once
// and never closed.
var lockFile = sync.OnceValue(func() *os.File {
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "pubmesh-freeport.lock"), os.O_RDWR|os.O_CREATE, 0o666)
	if err != nil {
		return nil
	}
	return f
})

// reserve locks ports [p, p+n) for this process and reports whether it
// could. Without the lock file (an unwritable temp directory) it reserves
// nothing and reports true: the free check still runs, as before.
//
// A process that asks twice for a port it holds gets it again (its own
// locks never conflict); the walk only comes round after thousands of
// ports, and by then the test that had it has usually ended.
func reserve(p, n int) bool {
	f := lockFile()
	if f == nil {
		return true
	}
	lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: 0, Start: int64(p), Len: int64(n)}
	return syscall.FcntlFlock(f.Fd(), syscall.F_SETLK, &lk) == nil
}
