package oci

import (
	"archive/tar"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/bakeimg/bake/internal/execx"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// TestGatewayPackage is the Go package of the test gateway (see
// oci/testgateway): a static stand-in for OpenClaw's gateway with the same
// config path, token check and health probe command line.
const TestGatewayPackage = "github.com/bakeimg/bake/oci/testgateway"

// BuildTestGatewayBinary compiles the test gateway as a static, reproducible
// linux/amd64 binary at out. moduleDir is the root of bake's module.
func BuildTestGatewayBinary(ctx context.Context, r execx.Runner, moduleDir, out string) error {
	if r == nil {
		r = execx.Default
	}
	abs, err := filepath.Abs(out)
	if err != nil {
		return err
	}
	return r.Run(ctx, execx.Cmd{
		Name: "go",
		Args: []string{"build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w -buildid=", "-o", abs, TestGatewayPackage},
		Dir:  moduleDir,
		Env:  []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64"},
	})
}

// BuildTestGatewayImage makes a one-layer image around the test gateway
// binary at binPath, shaped like the real gateway image: the binary is
// /usr/local/bin/openclaw, user 1000:1000, HOME /home/node with
// /home/node/.openclaw (mode 1777, any uid works), the same command line
// (without tini: the Go server handles SIGTERM itself). The same binary
// and epoch give the same digest.
func BuildTestGatewayImage(ctx context.Context, binPath string, epoch int64) (v1.Image, error) {
	st, err := os.Stat(binPath)
	if err != nil {
		return nil, fmt.Errorf("test gateway image: %w", err)
	}
	passwd := "root:x:0:0:root:/root:/sbin/nologin\nnode:x:1000:1000::/home/node:/sbin/nologin\n"
	group := "root:x:0:\nnode:x:1000:\n"
	es := withParents([]entry{
		{Name: "usr/local/bin/openclaw", Type: tar.TypeReg, Mode: 0o755, Size: st.Size(), Open: opener(binPath)},
		fileEntry("etc/passwd", 0o644, []byte(passwd)),
		fileEntry("etc/group", 0o644, []byte(group)),
		dirEntry("home/node", 0o1777, 1000, 1000),
		dirEntry("home/node/.openclaw", 0o1777, 1000, 1000),
		dirEntry("tmp", 0o1777, 0, 0),
	}, nil)
	dir, err := os.MkdirTemp("", "bake-testgw-")
	if err != nil {
		return nil, err
	}
	// The layer is small: keep it in memory so the image does not depend
	// on a file that has to outlive it.
	lf, err := writeLayerFile(filepath.Join(dir, "layer.tar.gz"), es, epoch)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	blob, err := os.ReadFile(lf.Path)
	os.RemoveAll(dir)
	if err != nil {
		return nil, err
	}
	layer, err := newMemLayer(blob, lf)
	if err != nil {
		return nil, err
	}
	created := time.Unix(epoch, 0).UTC()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, MediaType: types.OCILayer,
		History: v1.History{Created: v1.Time{Time: created}, CreatedBy: "bake: test gateway " + TestGatewayPackage}})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Created = v1.Time{Time: created}
	cf.Config = v1.Config{
		User:         DefaultUser,
		WorkingDir:   DefaultHome,
		Env:          []string{"PATH=" + defaultPath, "HOME=" + DefaultHome},
		Entrypoint:   []string{"/usr/local/bin/openclaw"},
		Cmd:          GatewayCmd(GatewayPort),
		ExposedPorts: map[string]struct{}{itoa(GatewayPort) + "/tcp": {}},
		// Every 30 s, as the real image's (GatewayHealthcheck): each
		// check is an exec in the container (containerd, its shim, runc,
		// this binary), about 1 s of a one-vCPU TCG guest's CPU; at 10 s
		// it was 5.7 s a minute, three quarters of what an idle test
		// appliance burns (BENCHMARKS.md, session 19).
		Healthcheck: &v1.HealthConfig{
			Test:     []string{"CMD", "/usr/local/bin/openclaw", "healthz", "--port", itoa(GatewayPort)},
			Interval: 30 * time.Second, Timeout: 5 * time.Second, Retries: 3,
		},
		StopSignal: "SIGTERM",
		Labels: map[string]string{
			"org.opencontainers.image.title":   "openclaw-test-gateway",
			"org.opencontainers.image.version": "test",
			"org.opencontainers.image.created": created.Format(time.RFC3339),
		},
	}
	return mutate.ConfigFile(img, cf)
}
