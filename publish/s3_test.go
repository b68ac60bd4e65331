package publish

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseS3(t *testing.T) {
	good := map[string]S3Dest{
		"s3://images/openclaw.qcow2":             {"images", "openclaw.qcow2"},
		"s3://my-images.example/a/b/c-1.0.raw":   {"my-images.example", "a/b/c-1.0.raw"},
		"s3://abc/k":                             {"abc", "k"},
		"s3://" + strings.Repeat("a", 63) + "/k": {strings.Repeat("a", 63), "k"},
		"s3://b-1/" + strings.Repeat("k", 1024):  {"b-1", strings.Repeat("k", 1024)},
		"s3://images/spaces are fine/é.qcow2":    {"images", "spaces are fine/é.qcow2"},
	}
	for in, want := range good {
		got, err := ParseS3(in)
		if err != nil || got != want {
			t.Errorf("ParseS3(%q) = %+v, %v; want %+v", in, got, err, want)
		}
		if err == nil && got.String() != in {
			t.Errorf("%+v.String() = %q, want %q", got, got.String(), in)
		}
	}
	bad := map[string]string{
		"oci://r/a:1":                              "want s3://BUCKET/KEY",
		"S3://images/a":                            "want s3://BUCKET/KEY",
		"s3://images":                              "no object key",
		"s3://images/":                             "no object key",
		"s3://images/dir/":                         "ends in /",
		"s3://Images/a":                            "lower-case",
		"s3://ab/a":                                "3 to 63",
		"s3://" + strings.Repeat("a", 64) + "/k":   "3 to 63",
		"s3://-images/a":                           "beginning and ending",
		"s3://images-/a":                           "beginning and ending",
		"s3://im..ages/a":                          "two dots",
		"s3://im.-ages/a":                          "dot next to a hyphen",
		"s3://192.168.1.10/a":                      "IP address",
		"s3://im_ages/a":                           "lower-case",
		"s3://images/a//b":                         "empty path segment",
		"s3://images/a/../b":                       ". or .. segment",
		"s3://images/./b":                          ". or .. segment",
		"s3://images/a\x00b":                       "control character",
		"s3://images/a\nb":                         "control character",
		"s3://images/a?versionId=1":                "query",
		"s3://images/a#x":                          "query or fragment",
		"s3://images/\xff":                         "not UTF-8",
		"s3://images/" + strings.Repeat("k", 1025): "longer than 1024",
		"s3://AKIA:secret@images/a":                "takes no credentials",
		"s3://images:9000/a":                       "takes no credentials, user or port",
	}
	for in, want := range bad {
		_, err := ParseS3(in)
		if err == nil || !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseS3(%q): %v; want a usage error with %q", in, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("ParseS3(%q) echoes the URL's secret: %v", in, err)
		}
	}
}

func TestParseEndpoint(t *testing.T) {
	for in, want := range map[string]string{
		"https://s3.example.net":       "https://s3.example.net",
		"https://127.0.0.1:9000/":      "https://127.0.0.1:9000",
		"https://[::1]:9000":           "https://[::1]:9000",
		"https://s3.eu-west-1.aws.com": "https://s3.eu-west-1.aws.com",
	} {
		if got, err := parseEndpoint(in); err != nil || got != want {
			t.Errorf("parseEndpoint(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for in, want := range map[string]string{
		"http://s3.example.net":          "only HTTPS",
		"s3.example.net":                 "want https://",
		"https://":                       "want https://HOST",
		"https://s3.example.net/bucket":  "without a path",
		"https://s3.example.net?x=1":     "without a path",
		"https://key:secret@example.net": "no credentials in the URL",
	} {
		_, err := parseEndpoint(in)
		if err == nil || !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), want) {
			t.Errorf("parseEndpoint(%q): %v; want %q", in, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("parseEndpoint(%q) echoes the secret: %v", in, err)
		}
	}
}

func TestPartPlan(t *testing.T) {
	for _, c := range []struct {
		size, want, partSize int64
		parts                int
	}{
		{0, 0, DefaultPartSize, 1},
		{1, 0, DefaultPartSize, 1},
		{DefaultPartSize, 0, DefaultPartSize, 1},
		{DefaultPartSize + 1, 0, DefaultPartSize, 2},
		{23 << 20, 5 << 20, 5 << 20, 5},
		{10000 * (5 << 20), 5 << 20, 5 << 20, 10000},
		// Too many parts: the part grows, in whole MiB.
		{10000*(5<<20) + 1, 5 << 20, 6 << 20, 8334},
		{1 << 40, 0, 105 << 20, 9987},
	} {
		ps, n, err := partPlan(c.size, c.want)
		if err != nil || ps != c.partSize || n != c.parts {
			t.Errorf("partPlan(%d, %d) = %d, %d, %v; want %d, %d", c.size, c.want, ps, n, err, c.partSize, c.parts)
		}
		if err == nil && (int64(n)*ps < c.size || n > maxParts) {
			t.Errorf("partPlan(%d): %d parts of %d do not hold it", c.size, n, ps)
		}
	}
	for _, want := range []int64{4 << 20, 6 << 30} {
		if _, _, err := partPlan(1, want); !errors.Is(err, ErrUsage) {
			t.Errorf("partPlan(1, %d): %v, want a usage error", want, err)
		}
	}
	if _, _, err := partPlan(10000*(5<<30)+1, 0); !errors.Is(err, ErrUsage) {
		t.Errorf("an object beyond S3's largest: %v", err)
	}
}

// The checksums S3 reports: the object's SHA-256 for one PUT; for a
// multipart upload the SHA-256 of the parts' SHA-256s, "-N".
func TestHashImage(t *testing.T) {
	p := filepath.Join(t.TempDir(), "img")
	data := []byte(strings.Repeat("0123456789", 1000))
	os.WriteFile(p, data, 0o644)
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	one, err := hashImage(context.Background(), f, int64(len(data)), 1<<20, 1)
	whole := sha256.Sum256(data)
	if err != nil || one.multipart || one.s3Sum != base64.StdEncoding.EncodeToString(whole[:]) {
		t.Errorf("one PUT: %+v %v", one, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := hashImage(ctx, f, int64(len(data)), 4000, 3); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	three, err := hashImage(context.Background(), f, int64(len(data)), 4000, 3)
	if err != nil || !three.multipart || len(three.parts) != 3 {
		t.Fatalf("multipart: %+v %v", three, err)
	}
	var cat []byte
	for _, r := range [][2]int{{0, 4000}, {4000, 8000}, {8000, 10000}} {
		s := sha256.Sum256(data[r[0]:r[1]])
		cat = append(cat, s[:]...)
	}
	c := sha256.Sum256(cat)
	if want := base64.StdEncoding.EncodeToString(c[:]) + "-3"; three.s3Sum != want || three.sha256 != one.sha256 {
		t.Errorf("composite %s, want %s", three.s3Sum, want)
	}
}

func TestS3Credentials(t *testing.T) {
	for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"} {
		t.Setenv(v, "")
	}
	dir := t.TempDir()
	t.Setenv("HOME", dir)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "")
	if _, _, err := s3Credentials(""); err == nil || !strings.Contains(err.Error(), "no S3 credentials") {
		t.Errorf("none: %v", err)
	}
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
	if _, _, err := s3Credentials(""); err == nil || !strings.Contains(err.Error(), "set both") {
		t.Errorf("half: %v", err)
	}
	t.Setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
	c, src, err := s3Credentials("")
	if err != nil || c.AccessKeyID != "AKIDENV" || c.SecretAccessKey != "envsecret" || strings.Contains(src, "envsecret") {
		t.Errorf("env: %+v %q %v", c, src, err)
	}
	file := filepath.Join(dir, "creds")
	os.WriteFile(file, []byte("# comment\n[default]\naws_access_key_id = AKIDDEF\naws_secret_access_key = defsecret\n\n[profile ci]\naws_access_key_id=AKIDCI\naws_secret_access_key=cisecret\naws_session_token = tok\n[half]\naws_access_key_id = X\n"), 0o600)
	// A named file wins over the environment.
	c, src, err = s3Credentials(file)
	if err != nil || c.AccessKeyID != "AKIDDEF" || c.SecretAccessKey != "defsecret" || src != file+" [default]" {
		t.Errorf("file: %+v %q %v", c, src, err)
	}
	t.Setenv("AWS_PROFILE", "ci")
	c, _, err = s3Credentials(file)
	if err != nil || c.AccessKeyID != "AKIDCI" || c.SessionToken != "tok" {
		t.Errorf("profile ci: %+v %v", c, err)
	}
	for profile, want := range map[string]string{"half": "both needed", "nope": "no [nope] profile"} {
		t.Setenv("AWS_PROFILE", profile)
		if _, _, err := s3Credentials(file); err == nil || !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), want) {
			t.Errorf("profile %s: %v", profile, err)
		}
	}
	// ~/.aws/credentials when the environment has none.
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	os.MkdirAll(filepath.Join(dir, ".aws"), 0o700)
	os.Rename(file, filepath.Join(dir, ".aws", "credentials"))
	c, src, err = s3Credentials("")
	if err != nil || c.AccessKeyID != "AKIDDEF" || !strings.HasSuffix(src, ".aws/credentials [default]") {
		t.Errorf("home: %+v %q %v", c, src, err)
	}
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("[default]\naws_secret_access_key: colonsecret\n"), 0o600)
	if _, _, err := s3Credentials(bad); err == nil || strings.Contains(err.Error(), "colonsecret") {
		t.Errorf("a bad line: %v (must not echo it)", err)
	}
}

// Bad s3 destinations and s3-only flags elsewhere are refused before
// anything is read or sent.
func TestPublishS3Usage(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKID")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	img := filepath.Join(t.TempDir(), "none.qcow2")
	for _, o := range []Options{
		{Image: img, To: "s3://images"},
		{Image: img, To: "s3://images/a", Endpoint: "http://127.0.0.1:1"},
		{Image: img, To: "s3://images/a", PartSize: 1 << 20},
		{Image: img, To: "oci://r.example/a:1", Endpoint: "https://s3.example"},
		{Image: img, To: "s3://images/a"}, // no image: no manifest
	} {
		if _, err := Publish(context.Background(), o); !errors.Is(err, ErrUsage) {
			t.Errorf("%+v: %v, want a usage error", o, err)
		}
	}
}

// Whatever ParseS3 accepts is a valid bucket and an object key, and
// prints back as given; the credentials file parser never echoes a line.
func FuzzParseS3(f *testing.F) {
	for _, s := range []string{"s3://images/a.qcow2", "s3://a.b-c/x/y/z", "s3://b/", "s3://AK:SK@b/k", "s3://b/a/../c", "s3://192.168.0.1/k"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseS3(s)
		if err != nil {
			if !errors.Is(err, ErrUsage) {
				t.Fatalf("%q: %v is not a usage error", s, err)
			}
			return
		}
		if d.String() != s || checkBucket(d.Bucket) != nil || checkKey(d.Key) != "" {
			t.Fatalf("%q accepted as %+v", s, d)
		}
		for _, r := range d.Key {
			if r < 0x20 || r == 0x7f {
				t.Fatalf("%q: control character in the key", s)
			}
		}
	})
}
