package builder

import (
	"slices"
	"strings"
	"testing"

	"github.com/bakeimg/bake/appliance"
	"github.com/bakeimg/bake/builder/recipe"
	"github.com/bakeimg/bake/firstboot"
	"github.com/bakeimg/bake/verify"
)

// The build and verify agree on every path of the appliance: the gateway's
// state dir (the build makes it and mounts it), its openclaw.json (first
// boot writes it, verify reads and stats it) and their owner, for a
// gateway run as a named user, with a home of its own, as a numeric
// UID:GID, and with a state dir the recipe mounts itself.
func TestBuildAndVerifyAgreeOnPaths(t *testing.T) {
	const recipeText = `apiVersion: bake/v1
name: paths
base: {debian: {suite: bookworm}}
users:
  - {name: admin, groups: [sudo], sudo: nopasswd}
  - {name: openclaw, system: true HOME}
containers:
  - name: openclaw-gateway
    image: "127.0.0.1:5000/gw@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    user: USER
    volumes: VOLUMES
gateway: {container: openclaw-gateway}
firstboot: {admin_user: admin}
`
	for _, c := range []struct {
		name, home, user, volumes string
		stateDir, owner           string
	}{
		{"named user", "", "openclaw", "[]", "/home/openclaw/.openclaw", "openclaw"},
		{"named user with a home", ", home: /srv/openclaw", "openclaw", "[]", "/srv/openclaw/.openclaw", "openclaw"},
		{"numeric uid:gid", "", "1500:1500", "[]", appliance.StateDir + "/openclaw-gateway", "1500:1500"},
		{"mounted state dir", "", "openclaw", "[/srv/gw-state:" + appliance.GatewayContainerStateDir + "]", "/srv/gw-state", "openclaw"},
		{"numeric uid:gid, mounted state dir", "", "1500:1500", "[\"/srv/gw-state:" + appliance.GatewayContainerStateDir + "\", /srv/data:/data:ro]", "/srv/gw-state", "1500:1500"},
	} {
		t.Run(c.name, func(t *testing.T) {
			src := strings.NewReplacer(" HOME", c.home, "USER", c.user, "VOLUMES", c.volumes).Replace(recipeText)
			r, err := recipe.Parse("paths.yaml", []byte(src), t.TempDir(), nil)
			if err != nil {
				t.Fatalf("%v\n%s", err, src)
			}
			config := c.stateDir + "/" + appliance.GatewayConfigName
			p, err := Compile(r, Options{})
			if err != nil {
				t.Fatal(err)
			}
			spec, err := verify.SpecFromRecipe(r)
			if err != nil {
				t.Fatal(err)
			}

			gw := p.gatewayOptions()
			fb := p.firstbootOptions()
			for what, got := range map[string]string{
				"build: state dir":               gw.StateDir,
				"build: openclaw.json":           gw.ConfigPath(),
				"first boot: openclaw.json":      fb.GatewayConfig,
				"verify: openclaw.json":          spec.Gateway.ConfigPath,
				"build: owner":                   gw.Owner,
				"first boot: owner":              fb.GatewayOwner,
				"verify: owner and process user": spec.Gateway.User,
			} {
				want := config
				switch {
				case strings.HasSuffix(what, "state dir"):
					want = c.stateDir
				case strings.Contains(what, "owner"):
					want = c.owner
				}
				if got != want {
					t.Errorf("%s: %q, want %q", what, got, want)
				}
			}
			// The container mounts that state dir where the image keeps
			// its state, once.
			spec0 := p.containerSpec(*r.ContainerByName("openclaw-gateway"))
			mount := c.stateDir + ":" + appliance.GatewayContainerStateDir
			if n := slices.Index(spec0.Volumes, mount); n < 0 || slices.Index(spec0.Volumes[n+1:], mount) >= 0 {
				t.Errorf("container volumes %q, want %s once", spec0.Volumes, mount)
			}
			// The state dir the build makes is the one verify stats.
			var made bool
			for _, f := range appliance.GatewayFiles(gw) {
				if f.Path == c.stateDir && f.Owner == c.owner {
					made = true
				}
			}
			if !made {
				t.Errorf("the gateway stage does not make %s owned by %s", c.stateDir, c.owner)
			}
			// First boot's unit writes the config verify reads.
			if conf := firstboot.Files(fb); !slices.ContainsFunc(conf, func(f appliance.File) bool {
				return strings.Contains(string(f.Content), config)
			}) {
				t.Errorf("no first-boot file names %s", config)
			}
		})
	}
}
