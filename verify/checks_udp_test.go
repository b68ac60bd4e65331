package verify

import (
	"encoding/base64"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bakeimg/bake/internal/testenv"
)

func TestParseUDPState(t *testing.T) {
	b, err := os.ReadFile("testdata/udp-state.txt")
	if err != nil {
		t.Fatal(err)
	}
	st := parseUDPState(string(b))
	for k, want := range map[string]int64{
		"Udp.InDatagrams": 2079, "Udp.NoPorts": 3, "Udp.InErrors": 1, "Ip.InReceives": 205123, "Icmp.InDestUnreachs": 4,
		"Udp6.InDatagrams": 12, "Udp6.NoPorts": 2, "Ip6.InReceives": 70000, "UdpLite.InDatagrams": 0,
	} {
		if got, ok := st.snmp[k]; !ok || got != want {
			t.Errorf("snmp %s = %d (%v), want %d", k, got, ok, want)
		}
	}
	if _, ok := st.snmp["Udp.Udp"]; ok {
		t.Errorf("a header read as a value: %v", st.snmp)
	}
	sw := udpSweep{Src: netip.MustParseAddr("10.77.0.1"), Sport: 45678}
	for _, tc := range []struct {
		tool, tag string
		want      int64
	}{
		{"iptables", sw.tag("seen"), 131070},
		{"iptables", sw.tag("passed-input"), 1},
		{"iptables", "bake-verify-udp-seen-67", 65535},
		{"iptables", "bake-verify-udp-passed-input-67", 2},
		{"ip6tables", sw.tag("seen"), 65535},
		{"ip6tables", sw.tag("passed-input"), 0},
		{"iptables", "bake-verify-udp-seen-4567", 0}, // a prefix of another tag
	} {
		if got := st.tagged(tc.tool, tc.tag); got != tc.want {
			t.Errorf("%s %s: %d, want %d", tc.tool, tc.tag, got, tc.want)
		}
	}
	var policy, accept41641 bool
	for _, r := range st.counters {
		if r.Table == "iptables filter" && r.Chain == "INPUT" && r.Index == 0 && r.Text == "policy DROP" && r.Pkts == 196600 {
			policy = true
		}
		if r.Table == "iptables filter" && r.Chain == "ufw-user-input" && r.Index == 2 && r.Pkts == 2 && strings.HasSuffix(r.Text, "udp dpt:41641") {
			accept41641 = true
		}
	}
	if !policy || !accept41641 {
		t.Errorf("policy %v, the 41641 rule %v: %+v", policy, accept41641, st.counters)
	}
}

func TestCounterDeltas(t *testing.T) {
	a := parseRuleCounters("Chain INPUT (policy DROP 10 packets, 100 bytes)\n pkts bytes target prot opt in out source destination\n 5 50 ACCEPT 17 -- * * 0.0.0.0/0 0.0.0.0/0 udp dpt:41641\n")
	b := parseRuleCounters("Chain INPUT (policy DROP 65544 packets, 100 bytes)\n pkts bytes target prot opt in out source destination\n 6 60 ACCEPT 17 -- * * 0.0.0.0/0 0.0.0.0/0 udp dpt:41641\n 9 9 LOG 17 -- * * 0.0.0.0/0 0.0.0.0/0 new\n")
	for i := range a {
		a[i].Table = "iptables filter"
	}
	for i := range b {
		b[i].Table = "iptables filter"
	}
	d := counterDeltas(a, b, 1)
	if len(d) != 2 || !strings.Contains(d[0], "INPUT #0 +65534: policy DROP") || !strings.Contains(d[1], "+1: ACCEPT") {
		t.Errorf("deltas %q", d)
	}
	if d := counterDeltas(a, b, 1000); len(d) != 1 {
		t.Errorf("deltas of 1000 or more: %q", d)
	}
}

func TestParseUDPLog(t *testing.T) {
	log := `[  812.345678] bake-verify-udp: IN=ens3 OUT= MAC=52:54:00:be:12:00:9a:3b:4c:5d:6e:7f:08:00 SRC=10.77.0.1 DST=10.77.0.23 LEN=43 TOS=0x00 PREC=0x00 TTL=64 ID=0 DF PROTO=UDP SPT=45678 DPT=41641 LEN=23
[  812.345679] bake-verify-udp: IN=ens3 OUT= MAC=52:54:00:be:12:00:9a:3b:4c:5d:6e:7f:08:00 SRC=10.77.0.1 DST=10.77.0.23 LEN=43 TOS=0x00 PREC=0x00 TTL=64 ID=0 DF PROTO=UDP SPT=45678 DPT=41641 LEN=23
[  813.000001] bake-verify-udp: IN=ens3 OUT= MAC=52:54:00:be:12:00:9a:3b:4c:5d:6e:7f:86:dd SRC=fd77:0000:0000:0000:0000:0000:0000:0001 DST=fd77:0000:0000:0000:5054:00ff:febe:1200 LEN=51 TC=0 HOPLIMIT=64 FLOWLBL=0 PROTO=UDP SPT=45678 DPT=5353 LEN=23
[  814.000000] [UFW BLOCK] IN=ens3 OUT= SRC=10.77.0.1 DST=10.77.0.23 PROTO=UDP SPT=45678 DPT=9
[  815.000000] bake-verify-udp: IN=ens3 SRC=10.77.0.1 DST=10.77.0.23 PROTO=UDP SPT=45678 DPT=99999`
	got := parseUDPLog(log)
	if len(got) != 2 {
		t.Fatalf("passes %+v", got)
	}
	if got[0].Dport != 41641 || got[0].Src != netip.MustParseAddr("10.77.0.1") || got[0].Sport != 45678 {
		t.Errorf("first %+v", got[0])
	}
	if got[1].Dport != 5353 || got[1].Src != netip.MustParseAddr("fd77::1") {
		t.Errorf("second %+v", got[1])
	}
}

func TestUDPAllowed(t *testing.T) {
	allow := []string{"22/tcp", "41641/udp", "60000-60010/udp"}
	for _, tc := range []struct {
		v6           bool
		sport, dport int
		want         bool
	}{
		{false, 45678, 41641, true}, {true, 45678, 41641, true},
		{false, 67, 68, true}, {true, 67, 68, false}, {false, 45678, 68, false},
		{false, 67, 67, false}, {false, 45678, 22, false}, {false, 1, 60005, true}, {false, 1, 60011, false},
	} {
		if got := udpAllowed(allow, tc.v6, tc.sport, tc.dport); got != tc.want {
			t.Errorf("v6 %v %d -> %d: %v, want %v", tc.v6, tc.sport, tc.dport, got, tc.want)
		}
	}
}

// TestUDPRulesScript: the rules verify adds are deleted by the same specs,
// and the LOG rule names the tag parseUDPLog reads.
func TestUDPRulesScript(t *testing.T) {
	sw := []udpSweep{{Src: netip.MustParseAddr("10.77.0.1"), Sport: 67}, {Src: netip.MustParseAddr("fd77::1"), Sport: 45678}}
	add := strings.Split(strings.TrimSpace(udpRulesScript(sw, false)), "\n")
	del := strings.Split(strings.TrimSpace(udpRulesScript(sw, true)), "\n")
	if len(add) != 10 || len(add) != len(del) {
		t.Fatalf("add %d lines, delete %d", len(add), len(del))
	}
	for i := range add {
		a := strings.Replace(strings.Replace(add[i], " -A ", " -D ", 1), " -I ", " -D ", 1)
		if a != del[i] {
			t.Errorf("added %q, deleted %q", add[i], del[i])
		}
	}
	if !strings.HasPrefix(add[0], "iptables -w -t raw -I PREROUTING -s 10.77.0.1 -p udp --sport 67 ") || !strings.HasPrefix(add[5], "ip6tables ") ||
		!strings.Contains(add[2], `--log-prefix "bake-verify-udp: "`) {
		t.Errorf("rules:\n%s", strings.Join(add, "\n"))
	}
}

func TestUDPProbe(t *testing.T) {
	p := udpProbe(67, 68)
	if len(p) != 8+len(udpTag) || p[0] != 0 || p[1] != 67 || p[3] != 68 || int(p[4])<<8|int(p[5]) != len(p) || p[6] != 0 || p[7] != 0 {
		t.Errorf("probe % x", p)
	}
}

// FuzzParseUDPState: any guest output as the counters' sections. Nothing
// may panic; counts come from integers only.
func FuzzParseUDPState(f *testing.F) {
	if b, err := os.ReadFile("testdata/udp-state.txt"); err == nil {
		f.Add(string(b))
	}
	f.Add("== snmp\nUdp: InDatagrams\nUdp: x\n== iptables raw\nChain X (policy ACCEPT 1 packets, 1 bytes)\n1 2\n")
	f.Add("== snmp\nUdp:\nUdp:\n== snmp6\nUdp6 1\nUdp6X 2\n")
	f.Fuzz(func(t *testing.T, s string) {
		st := parseUDPState(s)
		for _, r := range st.counters {
			if r.Index < 0 || r.Chain == "" {
				t.Errorf("counter %+v", r)
			}
		}
		_ = st.tagged("iptables", "bake-verify-udp-seen-1")
		counterDeltas(st.counters, st.counters, 0)
	})
}

// FuzzParseUDPLog: any kernel log. Nothing may panic; every pass read has
// valid addresses and ports.
func FuzzParseUDPLog(f *testing.F) {
	f.Add("bake-verify-udp: IN=ens3 SRC=10.77.0.1 DST=10.77.0.23 LEN=43 PROTO=UDP SPT=45678 DPT=41641 LEN=23")
	f.Add("bake-verify-udp: SRC=fd77:0000:0000:0000:0000:0000:0000:0001 DST=:: PROTO=UDP SPT=1 DPT=70000")
	f.Fuzz(func(t *testing.T, s string) {
		for _, p := range parseUDPLog(s) {
			if !p.Src.IsValid() || !p.Dst.IsValid() || p.Sport < 0 || p.Sport > 65535 || p.Dport < 0 || p.Dport > 65535 {
				t.Errorf("pass %+v", p)
			}
		}
	})
}

func TestParseSeedSearch(t *testing.T) {
	s, ok := parseSeedSearch("files 48213\nfound 1 /home/openclaw/.openclaw/openclaw.json\nfound 3 /var/lib/cloud/instances/iid 1/user-data.txt\nfound 3 /var/lib/cloud/instances/iid 1/user-data.txt\nfound x /y\nfound 0 /z\nnoise\n")
	if !ok || s.Files != 48213 || len(s.Found) != 2 || len(s.Found[3]) != 1 || s.Found[3][0] != "/var/lib/cloud/instances/iid 1/user-data.txt" || s.Found[1][0] != "/home/openclaw/.openclaw/openclaw.json" {
		t.Errorf("%+v %v", s, ok)
	}
	if _, ok := parseSeedSearch("found 1 /x\n"); ok {
		t.Error("a search without its file count counted as run")
	}
	if _, ok := parseSeedSearch("files -3\n"); ok {
		t.Error("a negative count")
	}
}

// FuzzParseSeedSearch: any guest output. Nothing may panic; paths are
// never empty nor repeated for one needle, needles count from 1.
func FuzzParseSeedSearch(f *testing.F) {
	f.Add("files 10\nfound 1 /a\nfound 1 /a\nfound 2 \nfound -1 /b\n")
	f.Fuzz(func(t *testing.T, s string) {
		r, _ := parseSeedSearch(s)
		for i, paths := range r.Found {
			seen := map[string]bool{}
			for _, p := range paths {
				if i < 1 || p == "" || seen[p] {
					t.Errorf("found %v", r.Found)
				}
				seen[p] = true
			}
		}
	})
}

// TestSeedSearchScript runs the guest's search on a directory of this
// host (the script with its roots replaced): it names each file that holds
// the value read from stdin, and only those.
func TestSeedSearchScript(t *testing.T) {
	dir := t.TempDir()
	needle := "Zq81kLmN0pQrStUvWxYz0123456789abcdefABCDEFghijklmnopqrstuvwxyz01"
	files := map[string]string{"a/openclaw.json": `{"token": "` + needle + `"}`, "b/user-data.txt": "x\n" + needle + "\n", "c/other": "nothing", "d/bin": "\x00\x01" + needle + "\x00"}
	for name, body := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	script := strings.Replace(seedSearchScript, "find / /boot /boot/efi -xdev", "find "+dir+" -xdev", 1)
	script = strings.Replace(script, "timeout 600 systemctl is-system-running --wait", "true", 1) // not this host's boot
	if script == seedSearchScript {
		t.Fatal("the script's roots moved: update this test")
	}
	// Everything so far is older than since; a file the image shipped
	// (old ctime) is not searched even though it holds the value.
	old := filepath.Join(dir, "e/shipped")
	os.MkdirAll(filepath.Dir(old), 0o755)
	if err := os.WriteFile(old, []byte(needle), 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	since := time.Now().Unix()
	time.Sleep(1100 * time.Millisecond)
	for name, body := range files {
		// rewritten after since: changed (ctime), searched
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("/bin/sh", "-c", script, "sh", strconv.FormatInt(since, 10))
	other := "bvcOTHER0123456789abcdefghijklmnopqrstuvwxyz"
	cmd.Stdin = strings.NewReader(needle + "\n" + other + "\n")
	os.WriteFile(filepath.Join(dir, "c/other2"), []byte("x "+other+" y"), 0o644)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	s, ok := parseSeedSearch(string(out))
	want := []string{filepath.Join(dir, "a/openclaw.json"), filepath.Join(dir, "b/user-data.txt"), filepath.Join(dir, "d/bin")}
	if !ok || s.Files != 6 || s.Changed != 5 || !slices.Equal(s.Found[1], want) || !slices.Equal(s.Found[2], []string{filepath.Join(dir, "c/other2")}) || len(s.Found) != 2 {
		t.Errorf("%+v %v, want %q\n%s", s, ok, want, out)
	}
	if strings.Contains(string(out), needle) || strings.Contains(string(out), other) {
		t.Errorf("the output shows a value:\n%s", out)
	}
}

func TestSeedCanary(t *testing.T) {
	ud, err := ParseUserData("extra.yaml", []byte("#cloud-config\npackages: [jq]\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, extra := range []*UserData{nil, ud} {
		s := Seed{InstanceID: "iid-x", AdminUser: "admin", AuthorizedKeys: []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl x"},
			Token: strings.Repeat("T", 64), Canary: "bvcCANARY0123456789abcdefghijklmnopqrstuvw", Extra: extra}
		files := s.Files()
		for name, b := range files {
			if has := strings.Contains(string(b), s.Canary); has != (name == "user-data") {
				t.Errorf("extra %v: %s holds the canary: %v\n%s", extra != nil, name, has, b)
			}
		}
	}
}

func TestNeedles(t *testing.T) {
	v := "Zq81kLmN0pQrStUvWxYz0123456789abcdefABCDEFghijklmnopqrstuvwxyz01"
	n := needles(v)
	full := base64.StdEncoding.EncodeToString([]byte(v + "\n"))
	if len(n) != 2 || n[0] != v || !strings.HasPrefix(full, n[1]) || len(n[1]) < 80 {
		t.Errorf("needles %q; base64 of the value and a newline %q", n, full)
	}
}

// TestProbeLogTCP: network.scan's LOG lines are read apart from
// network.udp's, and its rules count SYNs only.
func TestProbeLogTCP(t *testing.T) {
	log := `[  900.000001] bake-verify-tcp: IN=ens3 OUT= MAC=52:54:00:be:12:00:9a:3b:4c:5d:6e:7f:08:00 SRC=10.77.0.1 DST=10.77.0.23 LEN=44 TOS=0x00 PREC=0x00 TTL=49 ID=1 PROTO=TCP SPT=31234 DPT=22 WINDOW=1024 RES=0x00 SYN URGP=0
[  900.000002] bake-verify-udp: IN=ens3 OUT= SRC=10.77.0.1 DST=10.77.0.23 LEN=43 TTL=64 ID=0 DF PROTO=UDP SPT=45678 DPT=41641 LEN=23
[  900.000003] bake-verify-tcp: IN=docker0 OUT=veth1 SRC=10.77.0.1 DST=172.17.0.2 LEN=44 TTL=48 ID=1 PROTO=TCP SPT=31234 DPT=80 WINDOW=1024 RES=0x00 SYN URGP=0
[  900.000004] bake-verify-tcp: IN=ens3 SRC=10.77.0.1 DST=10.77.0.23 PROTO=UDP SPT=31234 DPT=53`
	tcp := parseProbeLog(log, true)
	if len(tcp) != 2 || tcp[0].Dport != 22 || tcp[1].Dport != 80 || tcp[0].Sport != 31234 {
		t.Errorf("tcp passes %+v", tcp)
	}
	udp := parseUDPLog(log)
	if len(udp) != 1 || udp[0].Dport != 41641 {
		t.Errorf("udp passes %+v", udp)
	}
	sw := []udpSweep{{Src: netip.MustParseAddr("fd77::1"), Sport: 31234, TCP: true}}
	add := strings.Split(strings.TrimSpace(udpRulesScript(sw, false)), "\n")
	if len(add) != 5 || !strings.HasPrefix(add[0], "ip6tables -w -t raw -I PREROUTING -s fd77::1 -p tcp --syn --sport 31234 -m comment --comment bake-verify-tcp-seen-31234") ||
		!strings.Contains(add[2], `--log-prefix "bake-verify-tcp: "`) {
		t.Errorf("rules:\n%s", strings.Join(add, "\n"))
	}
	a := NmapCountedArgs(netip.MustParseAddr("fd77::5"), netip.MustParseAddr("fd77::1"), "tap0", 31234, 10000)
	if strings.Join(a, " ") != "nmap -p- -Pn -n -sS -T4 -e tap0 -S fd77::1 --send-ip -g 31234 --max-retries 0 --min-rate 10000 --reason -oX - -6 fd77::5" {
		t.Errorf("args %q", a)
	}
}

// network.udp's first and last guest commands, each several that were
// separate SSH commands: run with a fake iptables/ip6tables (recording
// every call, listing a counting rule) and dmesg.
func TestUDPSetupAndFinishScripts(t *testing.T) {
	testenv.NeedTools(t, "sh", "grep", "tail", "cat")
	sweeps := []udpSweep{
		{Src: netip.MustParseAddr("10.77.0.1"), Dst: netip.MustParseAddr("10.77.0.50"), Sport: 67},
		{Src: netip.MustParseAddr("10.77.0.1"), Dst: netip.MustParseAddr("10.77.0.50"), Sport: 45678},
		{Src: netip.MustParseAddr("fd77::1"), Dst: netip.MustParseAddr("fd77::50"), Sport: 45678},
	}
	for _, failAdd := range []bool{false, true} {
		dir := t.TempDir()
		log := filepath.Join(dir, "calls")
		fail := ""
		if failAdd {
			fail = "case \"$*\" in *' -A INPUT '*) echo \"iptables: No chain/target/match by that name.\" >&2; exit 1;; esac\n"
		}
		ipt := "#!/bin/sh\necho \"$(basename $0) $*\" >>" + log + "\n" + fail +
			"case \"$*\" in *' -L'*) echo 'Chain PREROUTING (policy ACCEPT 70000 packets, 1 bytes)'; echo ' pkts bytes target prot opt in out source destination'; echo '65535 2883540 all -- * * 10.77.0.1 0.0.0.0/0 udp spt:67 /* bake-verify-udp-seen-67 */';; esac\n"
		for _, n := range []string{"iptables", "ip6tables"} {
			os.WriteFile(filepath.Join(dir, n), []byte(ipt), 0o755)
		}
		os.WriteFile(filepath.Join(dir, "dmesg"), []byte("#!/bin/sh\necho '[1.0] bake-verify-udp: IN=ens3 OUT= SRC=10.77.0.1 DST=10.77.0.50 LEN=43 PROTO=UDP SPT=67 DPT=68 LEN=23'\necho '[1.1] other line'\n"), 0o755)
		run := func(script string) (string, error) {
			cmd := exec.Command("sh", "-c", script)
			cmd.Env = append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"))
			out, err := cmd.Output()
			return string(out), err
		}
		out, err := run(udpSetupScript(sweeps))
		socks, rules, state, ok := udpSetupParts(out)
		if !strings.Contains(socks, "== udp6\n") || strings.Contains(socks, "== snmp") {
			t.Errorf("the sockets part: %q", socks)
		}
		calls, _ := os.ReadFile(log)
		if failAdd {
			if err == nil || ok || !strings.Contains(rules, "No chain") || strings.Contains(string(calls), " -L ") {
				t.Errorf("a rule failing: err %v ok %v rules %q calls\n%s", err, ok, rules, calls)
			}
			continue
		}
		st := parseUDPState(state)
		if err != nil || !ok || st.snmp["Udp.InDatagrams"] == 0 && st.snmp["Ip.InReceives"] == 0 || st.tagged("iptables", "bake-verify-udp-seen-67") != 65535*3 {
			t.Errorf("err %v ok %v, state %+v\n%s", err, ok, st.snmp, state)
		}
		if want := strings.Count(udpRulesScript(sweeps, false), "\n"); strings.Count(string(calls), " -w -t raw -I ")+strings.Count(string(calls), " -w -t security -A ") != want {
			t.Errorf("%d rules wanted, calls:\n%s", want, calls)
		}
		os.Remove(log)
		out, err = run(udpFinishScript(sweeps, udpTag))
		state, logOut, ok, removed := udpFinishParts(out)
		calls, _ = os.ReadFile(log)
		if err != nil || !ok || !removed || parseUDPState(state).tagged("ip6tables", "bake-verify-udp-seen-67") != 65535*3 {
			t.Errorf("finish: err %v ok %v removed %v\n%s", err, ok, removed, out)
		}
		if p := parseUDPLog(logOut); len(p) != 1 || p[0].Dport != 68 || strings.Contains(logOut, "other line") {
			t.Errorf("the log part %q: %+v", logOut, p)
		}
		if want := strings.Count(udpRulesScript(sweeps, true), "\n"); strings.Count(string(calls), " -D ") != want {
			t.Errorf("%d removals wanted, calls:\n%s", want, calls)
		}
	}
	if _, _, _, ok := udpSetupParts("== tcp\n"); ok {
		t.Error("udpSetupParts: no marker, ok")
	}
	if _, _, ok, removed := udpFinishParts("== snmp\n"); ok || removed {
		t.Error("udpFinishParts: no marker, ok")
	}
}
