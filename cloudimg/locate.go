package cloudimg

import (
	"context"
	"fmt"
	"strconv"
	"strings"
)

// MaxLocate bounds how many offsets one LocateOffsets call explains.
const MaxLocate = 64

// LocateOffsets says what holds each byte offset of the raw disk image
// raw: its partition and, on an ext2/3/4 filesystem, the file whose data
// block it is (debugfs icheck and ncheck, read only, no mount), or that
// the block is free (what a removed file held), or in use by the
// filesystem itself (the journal, inode tables, bitmaps). For evidence:
// where a secret the scan found lies. The image may be hostile: debugfs's
// output is bounded, and what it says is only reported, never followed.
// The answer has one line per offset, in order; at most MaxLocate.
func LocateOffsets(ctx context.Context, raw string, offsets []int64, opts ...Option) ([]string, error) {
	if len(offsets) > MaxLocate {
		offsets = offsets[:MaxLocate]
	}
	o := makeOptions(opts)
	f, t, err := openTable(ctx, "locate in", raw)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := make([]string, len(offsets))
	// The offsets of each ext partition, by block: one debugfs run each.
	type ask struct {
		i     int
		block int64
	}
	asks := map[*Partition][]ask{}
	probed := map[*Partition]error{} // each partition's superblock read once
	for i, off := range offsets {
		var p *Partition
		for j := range t.Partitions {
			q := &t.Partitions[j]
			if off >= q.Offset && off < q.Offset+q.Size {
				p = q
				break
			}
		}
		if p == nil {
			out[i] = "outside every partition (the partition table, a gap between partitions, or after the last)"
			continue
		}
		err, done := probed[p]
		if !done {
			p.FS, err = probeFS(f, p.Offset, p.Size)
			probed[p] = err
		}
		fs := p.FS
		if err != nil || fs.Type == "" {
			out[i] = fmt.Sprintf("partition %d, %d bytes in (no filesystem bake can read)", p.Number, off-p.Offset)
			continue
		}
		if !fs.IsExt() || fs.BlockSize <= 0 {
			out[i] = fmt.Sprintf("partition %d (%s), %d bytes in", p.Number, fs.Type, off-p.Offset)
			continue
		}
		asks[p] = append(asks[p], ask{i, (off - p.Offset) / int64(fs.BlockSize)})
	}
	rd := &debugfsReader{ctx: ctx, run: o.runner, raw: raw}
	for p, as := range asks {
		num := p.Number
		blocks := make([]string, len(as))
		for k, a := range as {
			blocks[k] = strconv.FormatInt(a.block, 10)
		}
		inodes, err := icheck(rd, p, blocks)
		if err != nil {
			for _, a := range as {
				out[a.i] = fmt.Sprintf("partition %d (%s), block %d: %v", num, p.FS.Type, a.block, err)
			}
			continue
		}
		var need []string
		for _, ino := range inodes {
			if ino > 0 {
				need = append(need, strconv.FormatInt(ino, 10))
			}
		}
		paths := map[int64]string{}
		if len(need) > 0 {
			if paths, err = ncheck(rd, p, need); err != nil {
				paths = map[int64]string{}
			}
		}
		for _, a := range as {
			where := fmt.Sprintf("partition %d (%s), block %d", num, p.FS.Type, a.block)
			ino := inodes[strconv.FormatInt(a.block, 10)]
			switch {
			case ino == 8:
				out[a.i] = where + ": the filesystem's journal (a copy of a metadata block the kernel wrote)"
			case ino > 0 && ino < 11:
				out[a.i] = fmt.Sprintf("%s: reserved inode %d", where, ino)
			case ino > 0 && paths[ino] != "":
				out[a.i] = fmt.Sprintf("%s: inode %d, %s", where, ino, paths[ino])
			case ino > 0:
				out[a.i] = fmt.Sprintf("%s: inode %d (no name found: an open file since removed, or a name debugfs did not list)", where, ino)
			default:
				used, err := testb(rd, p, a.block)
				switch {
				case err != nil:
					out[a.i] = fmt.Sprintf("%s: in no file (%v)", where, err)
				case used:
					out[a.i] = where + ": in no file; in use by the filesystem (inode table, bitmaps, group descriptors, or a directory's or inline data)"
				default:
					out[a.i] = where + ": a free block (what a removed or rewritten file held; not overwritten)"
				}
			}
		}
	}
	return out, nil
}

// icheck maps blocks to the inodes whose data they are (0: none).
func icheck(rd *debugfsReader, p *Partition, blocks []string) (map[string]int64, error) {
	b, err := rd.request(p, "icheck "+strings.Join(blocks, " "))
	if err != nil {
		return nil, err
	}
	m := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(strings.TrimSpace(line), "\t")
		if len(f) != 2 {
			continue
		}
		if ino, err := strconv.ParseInt(strings.TrimSpace(f[1]), 10, 64); err == nil && ino > 0 {
			m[strings.TrimSpace(f[0])] = ino
		}
	}
	return m, nil
}

// ncheck maps inodes to a path each.
func ncheck(rd *debugfsReader, p *Partition, inodes []string) (map[int64]string, error) {
	b, err := rd.request(p, "ncheck -c "+strings.Join(inodes, " "))
	if err != nil {
		return nil, err
	}
	m := map[int64]string{}
	for _, line := range strings.Split(string(b), "\n") {
		ino, name, ok := strings.Cut(strings.TrimSpace(line), "\t")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(ino), 10, 64)
		if err != nil || n <= 0 || m[n] != "" {
			continue
		}
		// A hostile image's names are shown, not used: quoted, bounded.
		if len(name) > 512 {
			name = name[:512] + "..."
		}
		m[n] = strconv.Quote(name)
	}
	return m, nil
}

// testb reports whether a block is marked in use.
func testb(rd *debugfsReader, p *Partition, block int64) (bool, error) {
	b, err := rd.requestMode(p, "testb "+strconv.FormatInt(block, 10), false)
	if err != nil {
		return false, err
	}
	s := string(b)
	switch {
	case strings.Contains(s, "not in use"):
		return false, nil
	case strings.Contains(s, "marked in use"):
		return true, nil
	}
	return false, fmt.Errorf("debugfs testb: %q", strings.TrimSpace(s))
}
