package aptrepo

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"
)

// Server serves a repository directory over HTTP on the loopback interface.
type Server struct {
	srv *http.Server
	ln  net.Listener
	url string
}

// Serve serves dir (read-only, net/http's FileServer) on 127.0.0.1 at a
// free port until Close. URL() is the repository URI to give apt.
func Serve(dir string) (*Server, error) {
	return ServeAddr(dir, "127.0.0.1:0")
}

// ServeAddr is Serve on a chosen address, which must be a loopback IP
// (127.0.0.1:8080, [::1]:0): a local mirror is never offered to the network.
func ServeAddr(dir, addr string) (*Server, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("aptrepo: serve: %w", err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("aptrepo: serve: %q is not a loopback address", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("aptrepo: serve: %w", err)
	}
	s := &Server{
		ln:  ln,
		url: "http://" + ln.Addr().String(),
		srv: &http.Server{
			Handler:           http.FileServer(http.Dir(dir)),
			ReadHeaderTimeout: 30 * time.Second,
		},
	}
	// Serve returns only when closed (or if the listener fails, which apt
	// then reports as failed fetches).
	go s.srv.Serve(ln)
	return s, nil
}

// URL is the base URL of the served directory, without a trailing slash,
// e.g. "http://127.0.0.1:40123".
func (s *Server) URL() string { return s.url }

// Close stops serving, waiting up to 5 s for requests in flight.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		return s.srv.Close()
	}
	return nil
}
