package verify

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// ProbeImageRef is the tag of the container image verify brings along to
// test Docker isolation: `docker load`ed over SSH, so it works on any image
// with Docker, with no registry and no network.
const ProbeImageRef = "bake-verify/probe:1"

// ProbeBody is what the probe server answers to anything.
const ProbeBody = "bake-verify-probe-ok"

// probeCode is the whole program of the probe container: a static x86-64
// Linux HTTP server with no libc (a Go binary would be a megabyte, and the
// bake binary itself is dynamically linked). It listens on 0.0.0.0:80,
// and for each connection reads the request once (2 s receive timeout),
// sends a fixed HTTP/1.0 response with MSG_NOSIGNAL, shuts down and closes.
// Assembled with GNU as from:
//
//	_start: mov edi,2; mov esi,1; xor edx,edx; mov eax,41; syscall  ; socket(AF_INET,SOCK_STREAM,0)
//	        test eax,eax; js fail; mov r12d,eax
//	        push 1; mov edi,r12d; mov esi,1; mov edx,2; mov r10,rsp; mov r8d,4
//	        mov eax,54; syscall; pop rax                          ; setsockopt(SO_REUSEADDR)
//	        mov edi,r12d; lea rsi,[rip+addr]; mov edx,16; mov eax,49; syscall ; bind
//	        test eax,eax; js fail
//	        mov edi,r12d; mov esi,64; mov eax,50; syscall         ; listen(fd,64)
//	        test eax,eax; js fail
//	        sub rsp,4096                                          ; read buffer
//	accept: mov edi,r12d; xor esi,esi; xor edx,edx; mov eax,43; syscall ; accept
//	        test eax,eax; js accept; mov r13d,eax
//	        push 0; push 2; mov edi,r13d; mov esi,1; mov edx,20; mov r10,rsp
//	        mov r8d,16; mov eax,54; syscall; add rsp,16           ; SO_RCVTIMEO 2s
//	        mov edi,r13d; mov rsi,rsp; mov edx,4096; xor eax,eax; syscall ; read
//	        mov edi,r13d; lea rsi,[rip+resp]; mov edx,resp_len; mov r10d,0x4000
//	        xor r8d,r8d; xor r9d,r9d; mov eax,44; syscall         ; sendto(MSG_NOSIGNAL)
//	        mov edi,r13d; mov esi,1; mov eax,48; syscall          ; shutdown(SHUT_WR)
//	        mov edi,r13d; mov eax,3; syscall; jmp accept          ; close
//	fail:   mov edi,1; mov eax,60; syscall                        ; exit(1)
//	addr:   .byte 2,0, 0,80, 0,0,0,0, 0,0,0,0,0,0,0,0             ; sockaddr_in 0.0.0.0:80
//	resp:   .ascii "HTTP/1.0 200 OK\r\n...\r\n\r\nbake-verify-probe-ok\r\n"
const probeCode = "bf02000000be0100000031d2b8290000000f0585c00f88e80000004189c46a014489e7be01000000ba020000004989e241b804000000b8360000000f05584489e7488d35c7000000ba10000000b8310000000f0585c00f88a70000004489e7be40000000b8320000000f0585c00f88900000004881ec001000004489e731f631d2b82b0000000f0585c078ee4189c56a006a024489efbe01000000ba140000004989e241b810000000b8360000000f054883c4104489ef4889e6ba0010000031c00f054489ef488d3552000000ba6a00000041ba004000004531c04531c9b82c0000000f054489efbe01000000b8300000000f054489efb8030000000f05e977ffffffbf01000000b83c0000000f0502000050000000000000000000000000485454502f312e3020323030204f4b0d0a436f6e74656e742d547970653a20746578742f706c61696e0d0a436f6e74656e742d4c656e6774683a2032320d0a436f6e6e656374696f6e3a20636c6f73650d0a0d0a62616b652d7665726966792d70726f62652d6f6b0d0a"

// probeAddrOffset is where the sockaddr_in starts in probeCode.
const probeAddrOffset = 0x10f

// ProbeServerELF returns the probe server as a static ELF executable that
// listens on port (80 in the container).
func ProbeServerELF(port int) ([]byte, error) {
	code, err := hex.DecodeString(probeCode)
	if err != nil {
		return nil, err
	}
	if port < 1 || port > 65535 {
		return nil, fmt.Errorf("verify: probe port %d", port)
	}
	if code[probeAddrOffset] != 2 || code[probeAddrOffset+1] != 0 {
		return nil, fmt.Errorf("verify: probe code has no sockaddr_in at %#x", probeAddrOffset)
	}
	binary.BigEndian.PutUint16(code[probeAddrOffset+2:], uint16(port))

	const (
		base    = 0x400000
		ehSize  = 64
		phSize  = 56
		codeOff = ehSize + phSize
	)
	var b bytes.Buffer
	le := binary.LittleEndian
	w := func(v any) { binary.Write(&b, le, v) }
	// ELF header.
	b.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0}) // 64-bit, little endian, version 1, SysV
	b.Write(make([]byte, 8))
	w(uint16(2))              // ET_EXEC
	w(uint16(62))             // EM_X86_64
	w(uint32(1))              // EV_CURRENT
	w(uint64(base + codeOff)) // entry
	w(uint64(ehSize))         // program headers
	w(uint64(0))              // no section headers
	w(uint32(0))              // flags
	w(uint16(ehSize))         // header size
	w(uint16(phSize))         // program header size
	w(uint16(1))              // one program header
	w(uint16(64))             // section header size
	w(uint16(0))              // no sections
	w(uint16(0))              // no section names
	// PT_LOAD of the whole file, read+execute.
	w(uint32(1))                   // PT_LOAD
	w(uint32(5))                   // PF_R|PF_X
	w(uint64(0))                   // offset
	w(uint64(base))                // vaddr
	w(uint64(base))                // paddr
	w(uint64(codeOff + len(code))) // filesz
	w(uint64(codeOff + len(code))) // memsz
	w(uint64(0x1000))              // align
	b.Write(code)
	return b.Bytes(), nil
}

// ProbeImage is the probe container image: one layer holding /probe-http
// (the server above, port 80), run as root in the container so that it can
// bind port 80 whatever the Docker version. Deterministic: the same bytes
// every time.
func ProbeImage() (v1.Image, error) {
	elf, err := ProbeServerELF(80)
	if err != nil {
		return nil, err
	}
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	epoch := time.Unix(0, 0).UTC()
	if err := tw.WriteHeader(&tar.Header{Name: "probe-http", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(elf)), ModTime: epoch, Format: tar.FormatPAX}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(elf); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	layerBytes := tb.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerBytes)), nil
	})
	if err != nil {
		return nil, err
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{Layer: layer, History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "bake verify: static HTTP probe"}})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Created = v1.Time{Time: epoch}
	cf.Config = v1.Config{
		Entrypoint:   []string{"/probe-http"},
		ExposedPorts: map[string]struct{}{"80/tcp": {}},
		Labels:       map[string]string{"org.opencontainers.image.title": "bake-verify-probe"},
	}
	return mutate.ConfigFile(img, cf)
}

// ProbeImageTar returns the probe image as a `docker load` archive tagged
// ProbeImageRef.
func ProbeImageTar() ([]byte, error) {
	img, err := ProbeImage()
	if err != nil {
		return nil, err
	}
	tag, err := name.NewTag(ProbeImageRef)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := tarball.Write(tag, img, &b); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
