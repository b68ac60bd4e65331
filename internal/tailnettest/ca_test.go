package tailnettest

import (
	"crypto/tls"
	"crypto/x509"
	"net/netip"
	"os"
	"testing"
)

// The server certificate verifies for its IP address through the CA alone.
func TestNewTestCA(t *testing.T) {
	dir := t.TempDir()
	ca, err := NewTestCA(dir, []netip.Addr{netip.MustParseAddr("10.78.0.1")}, []string{"hs.test"})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(ca.ServerCertFile, ca.ServerKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	pem, _ := os.ReadFile(ca.CertFile)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("CA not PEM")
	}
	for _, name := range []string{"10.78.0.1", "hs.test"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: name}); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "10.78.0.2"}); err == nil {
		t.Error("verified for another address")
	}
}
