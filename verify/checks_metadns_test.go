package verify

import (
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// The stand-in resolver answers its name with its address, other names
// with NXDOMAIN, and ignores what is not a query; the judge accepts only
// the answer to its own query.
func TestMetadataDNSReply(t *testing.T) {
	q, err := dnsQuery(0xbe17)
	if err != nil {
		t.Fatal(err)
	}
	r := dnsReply(q)
	if got := judgeDNSReply(hex.EncodeToString(r), 0xbe17); got != "" {
		t.Errorf("the stand-in's reply judged %q", got)
	}
	if got := judgeDNSReply(hex.EncodeToString(r), 0xbe18); !strings.Contains(got, "unexpected reply") {
		t.Errorf("another query's reply judged %q", got)
	}
	if dnsReply(r) != nil {
		t.Error("the stand-in answered a response")
	}
	if dnsReply([]byte{1, 2, 3}) != nil {
		t.Error("the stand-in answered garbage")
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 7})
	b.StartQuestions()
	b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName("example.com."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	other, _ := b.Finish()
	if got := judgeDNSReply(hex.EncodeToString(dnsReply(other)), 7); !strings.Contains(got, "rcode") {
		t.Errorf("NXDOMAIN judged %q", got)
	}
	for _, hx := range []string{"", "zz", "0102"} {
		if judgeDNSReply(hx, 0xbe17) == "" {
			t.Errorf("%q judged a good reply", hx)
		}
	}
}

func TestMetadataDNSVerdict(t *testing.T) {
	q, _ := dnsQuery(42)
	good := hex.EncodeToString(dnsReply(q))
	addrs := metadataDNSAddrs()
	if strings.Join(addrs, " ") != "169.254.169.254 168.63.129.16" {
		t.Fatalf("resolver stand-ins %q", addrs)
	}
	all := func(ctr string) string {
		var s string
		for _, a := range addrs {
			s += "dns host " + a + " rc=0 " + good + "\n" + "dns container " + a + " " + ctr + "\n"
		}
		return s
	}
	for _, tc := range []struct{ name, out, says string }{
		{"resolves", all("rc=0 " + good), ""},
		{"dropped", all("rc=124"), "a container cannot resolve at the cloud resolver 169.254.169.254:53: no reply (rc=124)"},
		{"refused", all("rc=1"), "no reply (rc=1)"},
		{"missing", "dns host 169.254.169.254 rc=0 " + good + "\n", "no result for the DNS query container -> 169.254.169.254:53"},
		{"guest cannot", strings.ReplaceAll(all("rc=0 "+good), "dns host 168.63.129.16 rc=0 "+good, "dns host 168.63.129.16 rc=124"), "not decided: the guest itself cannot resolve at the stand-in 168.63.129.16:53"},
	} {
		problems, ok := metadataDNSVerdict(tc.out, addrs, 42)
		got := strings.Join(problems, "\n")
		if tc.says == "" && got != "" || tc.says != "" && !strings.Contains(got, tc.says) {
			t.Errorf("%s: problems %q, want %q", tc.name, got, tc.says)
		}
		if !strings.Contains(ok, "resolve metadata-dns.bake-verify.test (192.0.2.53)") {
			t.Errorf("ok text %q", ok)
		}
	}
}

func TestMetadataDNSScriptParses(t *testing.T) {
	q, _ := dnsQuery(42)
	f := filepath.Join(t.TempDir(), "s.sh")
	os.WriteFile(f, []byte(metadataProbes("bake-verify-p80", []string{"169.254.169.254"})+"\n"+metadataDNSScript(metadataDNSAddrs(), q)), 0o644)
	if out, err := exec.Command("bash", "-n", f).CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, out)
	}
}
