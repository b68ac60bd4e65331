package firstboot

import (
	"encoding/base64"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/bakeimg/bake/internal/cloudconfig"
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
		if strings.ContainsAny(k, "\n\r") || strings.Contains(k, "PRIVATE KEY") || !utf8.ValidString(k) {
			return fmt.Errorf("seed: an admin key must be one public key on one line")
		}
	}
	// YAML (meta-data, user-data) is Unicode text: invalid UTF-8 cannot
	// be written as it is.
	if !utf8.ValidString(s.InstanceID) || !utf8.ValidString(s.Hostname) {
		return fmt.Errorf("seed: the instance id and host name must be UTF-8 text")
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
	m := cloudconfig.Map{{Key: "instance-id", Value: id}}
	if s.Hostname != "" {
		m = append(m, cloudconfig.Item{Key: "local-hostname", Value: s.Hostname})
	}
	return cloudconfig.Marshal(m)
}

// UserData is a #cloud-config with only standard keys, so cloud-init (when
// the image has it) validates it without a warning and never reports
// "degraded": ssh_authorized_keys (cloud-init installs them for its default
// user, which bake makes the admin; bake's first boot reads them too).
// Bake's own values travel beside it as files (NoCloud) or as
// write_files entries (CloudUserData).
func (s Seed) UserData() []byte {
	return cloudconfig.Document(nil, s.userData())
}

func (s Seed) userData() cloudconfig.Map {
	var m cloudconfig.Map
	if len(s.AdminKeys) > 0 {
		m = append(m, cloudconfig.Item{Key: "ssh_authorized_keys", Value: s.AdminKeys})
	}
	return m
}

// CloudUserData is user-data for a cloud instance, where there is no
// NoCloud volume: the keys as in UserData, and bake's values through
// cloud-init's standard write_files module into /run/bake/cloud-init-seed
// (a tmpfs: nothing is left on disk), which first boot reads once
// cloud-init's network stage is done. Needs cloud-init in firstboot.seed.
func (s Seed) CloudUserData() []byte {
	m := s.userData()
	v := s.values()
	delete(v, AdminSSHKeys)
	if len(v) > 0 {
		var files []any
		for _, n := range slices.Sorted(maps.Keys(v)) {
			files = append(files, cloudconfig.Map{
				{Key: "path", Value: CloudInitSeedDir + "/" + n},
				{Key: "permissions", Value: "0600"},
				{Key: "owner", Value: "root:root"},
				{Key: "encoding", Value: "b64"},
				{Key: "content", Value: base64.StdEncoding.EncodeToString([]byte(v[n]))},
			})
		}
		m = append(m, cloudconfig.Item{Key: "write_files", Value: files})
	}
	return cloudconfig.Document(nil, m)
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
