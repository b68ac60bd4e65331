package recipe

import (
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"strconv"
	"strings"
)

// sizeUnits are the units ParseSize accepts. K, M, G and T are 1024-based,
// as in qemu-img, sgdisk and truncate: a disk size is never meant in powers
// of ten, and KB/MB/GB are refused because readers disagree about them.
var sizeUnits = map[string]int64{
	"B": 1,
	"K": 1 << 10, "KiB": 1 << 10,
	"M": 1 << 20, "MiB": 1 << 20,
	"G": 1 << 30, "GiB": 1 << 30,
	"T": 1 << 40, "TiB": 1 << 40,
}

const sizeHint = "write a number and a unit, e.g. 4GiB or 1.5GiB; units are B, KiB, MiB, GiB, TiB, or K, M, G, T for the same"

// ParseSize parses a size with a unit ("4GiB", "512M", "1.5 GiB") into
// bytes. The number may be decimal but must come to whole bytes; a unit is
// required, so that "4" is not silently 4 bytes.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.TrimSpace(t[i:])
	if num == "" || strings.Count(num, ".") > 1 || num[0] == '.' || num[len(num)-1] == '.' {
		return 0, fmt.Errorf("size %q does not start with a number", s)
	}
	if unit == "" {
		return 0, fmt.Errorf("size %q has no unit", s)
	}
	mult, ok := sizeUnits[unit]
	if !ok {
		if fixed := unitSuggestion(unit); fixed != "" {
			return 0, fmt.Errorf("size %q: unknown unit %q; write %s%s", s, unit, num, fixed)
		}
		return 0, fmt.Errorf("size %q: unknown unit %q", s, unit)
	}
	r, ok := new(big.Rat).SetString(num)
	if !ok {
		return 0, fmt.Errorf("size %q does not start with a number", s)
	}
	r.Mul(r, new(big.Rat).SetInt64(mult))
	if !r.IsInt() {
		return 0, fmt.Errorf("size %q is not a whole number of bytes", s)
	}
	if !r.Num().IsInt64() {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return r.Num().Int64(), nil
}

// unitSuggestion maps common near-misses (GB, gib, g) to the 1024-based
// unit that was almost certainly meant.
func unitSuggestion(unit string) string {
	u := strings.ToUpper(strings.TrimSuffix(strings.TrimSuffix(unit, "ytes"), "yte"))
	u = strings.TrimSuffix(strings.TrimSuffix(u, "IB"), "B")
	switch u {
	case "K", "M", "G", "T":
		return u + "iB"
	case "":
		return "B"
	}
	return ""
}

var errMode = errors.New(`a mode is 3 or 4 octal digits in quotes, e.g. "0644", "0755" or "4755"`)

// ParseMode parses an octal mode string ("0644", "755", "4755", "0o755")
// into an fs.FileMode, mapping the setuid, setgid and sticky octal bits to
// Go's fs.ModeSetuid, fs.ModeSetgid and fs.ModeSticky (what os.Chmod
// expects).
func ParseMode(s string) (fs.FileMode, error) {
	s = strings.TrimPrefix(strings.TrimPrefix(s, "0o"), "0O")
	if len(s) < 3 || len(s) > 4 {
		return 0, errMode
	}
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil || v > 0o7777 {
		return 0, errMode
	}
	m := fs.FileMode(v & 0o777)
	if v&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if v&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if v&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m, nil
}
