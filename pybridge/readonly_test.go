//go:build unix

package pybridge

import (
	"strings"
	"syscall"
	"testing"
	"unsafe"
)

// A write into read-only memory (what a torch tensor over a read-only numpy
// memmap hands over) is an error naming the buffer, not a crash.
func TestMechanismApplyReadOnlyMemory(t *testing.T) {
	page := syscall.Getpagesize()
	mem, err := syscall.Mmap(-1, 0, page, syscall.PROT_READ, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		t.Skipf("mmap: %v", err)
	}
	defer syscall.Munmap(mem)
	addr := uintptr(unsafe.Pointer(&mem[0]))
	for _, kind := range []int{kindF64, kindF32} {
		_, err := MechanismApply(mechDropout, 0.5, 0, false, kind, addr, 4, 8, 1)
		if err == nil || !strings.HasPrefix(err.Error(), "[param:grads] ") || !strings.Contains(err.Error(), "read-only") {
			t.Errorf("kind %d: got %v, want a [param:grads] read-only error", kind, err)
		}
	}
	// Other panics still reach guard as internal errors.
	if _, err := MechanismApply(mechDropout, 0.5, 0, false, kindF64, 0, 4, 8, 1); err == nil || strings.Contains(err.Error(), "read-only") {
		t.Errorf("null address: got %v", err)
	}
}
