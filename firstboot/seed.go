package firstboot

import (
	"encoding/base64"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Seed is one instance's seed (docs/seed.md). Every field is optional.
type Seed struct {
	InstanceID       string // NoCloud meta-data instance-id (default iid-bake)
	Hostname         string // NoCloud meta-data local-hostname
	AdminKeys        []string
	GatewayToken     string
	TailscaleAuthKey string
}

var tokenRe = regexp.MustCompile(`^[A-Za-z0-9._~+/=-]{16,512}$`)

// Check reports what first boot would refuse.
func (s Seed) Check() error {
	if s.GatewayToken != "" && !tokenRe.MatchString(s.GatewayToken) {
		return fmt.Errorf("seed: the gateway token must be 16 to 512 characters of A-Z a-z 0-9 . _ ~ + / = -")
	}
	for _, k := range s.AdminKeys {
		if strings.ContainsAny(k, "\n\r") || strings.Contains(k, "PRIVATE KEY") {
			return fmt.Errorf("seed: an admin key must be one public key on one line")
		}
	}
	return nil
}

func (s Seed) values() map[string]string {
	v := map[string]string{}
	if len(s.AdminKeys) > 0 {
		v[AdminSSHKeys] = strings.Join(s.AdminKeys, "\n") + "\n"
	}
	if s.GatewayToken != "" {
		v[GatewayToken] = s.GatewayToken + "\n"
	}
	if s.TailscaleAuthKey != "" {
		v[TailscaleAuthKey] = s.TailscaleAuthKey + "\n"
	}
	return v
}

// MetaData is NoCloud's meta-data.
func (s Seed) MetaData() []byte {
	id := s.InstanceID
	if id == "" {
		id = "iid-bake"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "instance-id: %s\n", yamlString(id))
	if s.Hostname != "" {
		fmt.Fprintf(&b, "local-hostname: %s\n", yamlString(s.Hostname))
	}
	return []byte(b.String())
}

// UserData is a #cloud-config with only standard keys, so cloud-init (when
// the image has it) validates it without a warning and never reports
// "degraded": ssh_authorized_keys (cloud-init installs them for its default
// user, which bake makes the admin; bake's first boot reads them too).
// Bake's own values travel beside it as files (NoCloud) or as
// write_files entries (CloudUserData).
func (s Seed) UserData() []byte {
	var b strings.Builder
	b.WriteString("#cloud-config\n")
	if len(s.AdminKeys) > 0 {
		b.WriteString("ssh_authorized_keys:\n")
		for _, k := range s.AdminKeys {
			fmt.Fprintf(&b, "  - %s\n", yamlString(k))
		}
	}
	return []byte(b.String())
}

// CloudUserData is user-data for a cloud instance, where there is no
// NoCloud volume: the keys as in UserData, and bake's values through
// cloud-init's standard write_files module into /run/bake/cloud-init-seed
// (a tmpfs: nothing is left on disk), which first boot reads once
// cloud-init's network stage is done. Needs cloud-init in firstboot.seed.
func (s Seed) CloudUserData() []byte {
	b := strings.Builder{}
	b.Write(s.UserData())
	v := s.values()
	delete(v, AdminSSHKeys)
	if len(v) == 0 {
		return []byte(b.String())
	}
	b.WriteString("write_files:\n")
	names := make([]string, 0, len(v))
	for n := range v {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(&b, "  - path: %s/%s\n    permissions: '0600'\n    owner: root:root\n    encoding: b64\n    content: %s\n",
			CloudInitSeedDir, n, base64.StdEncoding.EncodeToString([]byte(v[n])))
	}
	return []byte(b.String())
}

// NoCloudFiles are bake's values as files for a NoCloud volume (beside
// meta-data and user-data): pass them as the extra files of
// vm.WriteNoCloudSeed.
func (s Seed) NoCloudFiles() map[string][]byte {
	out := map[string][]byte{}
	for n, v := range s.values() {
		out[n] = []byte(v)
	}
	return out
}

// SMBIOSArgs are QEMU arguments that pass the seed as systemd credentials
// in SMBIOS type 11 strings (io.systemd.credential.binary:NAME=BASE64).
func (s Seed) SMBIOSArgs() []string {
	v := s.values()
	names := make([]string, 0, len(v))
	for n := range v {
		names = append(names, n)
	}
	sort.Strings(names)
	var args []string
	for _, n := range names {
		val := "io.systemd.credential.binary:" + n + "=" + base64.StdEncoding.EncodeToString([]byte(v[n]))
		args = append(args, "-smbios", "type=11,value="+strings.ReplaceAll(val, ",", ",,"))
	}
	return args
}

// yamlString writes s as a YAML scalar: plain when that is safe, else
// double-quoted (strconv's escapes are valid YAML).
func yamlString(s string) string {
	if s != "" && !strings.ContainsAny(s, ":#'\"{}[],&*!|>%@`\\\n\t") && strings.TrimSpace(s) == s &&
		!strings.HasPrefix(s, "-") && !strings.HasPrefix(s, "?") {
		switch strings.ToLower(s) {
		case "true", "false", "yes", "no", "on", "off", "null", "~":
		default:
			if _, err := strconv.ParseFloat(s, 64); err != nil {
				return s
			}
		}
	}
	return strconv.Quote(s)
}
