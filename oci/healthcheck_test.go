package oci

import (
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// The gateway image's HEALTHCHECK (bash's /dev/tcp, no Node) is healthy
// exactly when /healthz answers a 2xx status, as the Node fetch it
// replaced (r.ok); the integration test runs it in the built image.
func TestGatewayHealthcheckScript(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatal(err)
	}
	hc := GatewayHealthcheck(GatewayPort)
	if len(hc.Test) != 4 || hc.Test[0] != "CMD" || hc.Test[1] != "/bin/bash" || hc.Test[2] != "-c" || hc.Test[3] != healthzScript(GatewayPort) {
		t.Fatalf("healthcheck %q", hc.Test)
	}
	run := func(port int) error {
		cmd := exec.Command(bash, "-c", healthzScript(port))
		done := make(chan error, 1)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			return err
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			t.Fatalf("the healthcheck on port %d did not end within 20 s", port)
			return nil
		}
	}
	serve := func(h http.HandlerFunc) int {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: h}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		return ln.Addr().(*net.TCPAddr).Port
	}
	status := func(code int) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/healthz" {
				http.NotFound(w, r)
				return
			}
			w.WriteHeader(code)
		}
	}
	for _, code := range []int{200, 204} {
		if err := run(serve(status(code))); err != nil {
			t.Errorf("/healthz %d: %v, want healthy", code, err)
		}
	}
	for _, code := range []int{301, 404, 500, 503} {
		if err := run(serve(status(code))); err == nil {
			t.Errorf("/healthz %d: healthy, want unhealthy", code)
		}
	}
	// Another path is not /healthz: a server answering 200 elsewhere only.
	if err := run(serve(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			w.WriteHeader(500)
		}
	})); err == nil {
		t.Error("a 500 on /healthz is healthy")
	}
	// Nothing listening.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	if err := run(closed); err == nil {
		t.Errorf("port %s with nothing listening: healthy", strconv.Itoa(closed))
	}
	// A listener that never answers: unhealthy, within read's 9 seconds.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	start := time.Now()
	if err := run(silent.Addr().(*net.TCPAddr).Port); err == nil {
		t.Error("a listener that never answers: healthy")
	}
	t.Logf("silent listener judged unhealthy after %s", time.Since(start).Round(100*time.Millisecond))
}
