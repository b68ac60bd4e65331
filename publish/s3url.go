package publish

import (
	"net"
	"net/url"
	"regexp"
	"strings"
	"unicode/utf8"
)

// S3Dest is a parsed s3://BUCKET/KEY.
type S3Dest struct {
	Bucket string
	Key    string
}

func (d S3Dest) String() string { return "s3://" + d.Bucket + "/" + d.Key }

var bucketRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)

// ParseS3 parses s3://BUCKET/KEY. BUCKET follows S3's naming rules (3 to
// 63 lower-case letters, digits, dots and hyphens, a letter or digit at
// each end, not an IP address); KEY names an object, not a folder: it is
// not empty, at most 1024 bytes of UTF-8 without control characters, has
// no "." or ".." segment and does not end in "/". Credentials never go in
// the URL: they come from the environment or a file.
func ParseS3(dest string) (S3Dest, error) {
	rest, ok := strings.CutPrefix(dest, "s3://")
	if !ok {
		return S3Dest{}, usage("--to %q: want s3://BUCKET/KEY (e.g. s3://images/openclaw/2026.12.qcow2)", dest)
	}
	bucket, key, found := strings.Cut(rest, "/")
	if strings.Contains(bucket, "@") || strings.Contains(bucket, ":") {
		// Not echoed: it may hold a secret.
		return S3Dest{}, usage("--to: s3://BUCKET/KEY takes no credentials, user or port in the URL (credentials come from the environment or --credentials FILE, the endpoint from --endpoint)")
	}
	if !found || key == "" {
		return S3Dest{}, usage("--to %s: no object key: want s3://BUCKET/KEY (e.g. s3://%s/openclaw.qcow2)", dest, bucket)
	}
	if err := checkBucket(bucket); err != nil {
		return S3Dest{}, usage("--to %s: bucket %q: %s", dest, bucket, err)
	}
	if err := checkKey(key); err != "" {
		return S3Dest{}, usage("--to %s: key %q: %s", dest, key, err)
	}
	return S3Dest{Bucket: bucket, Key: key}, nil
}

type reason string

func (r reason) Error() string { return string(r) }

func checkBucket(b string) error {
	switch {
	case !bucketRE.MatchString(b):
		return reason("want 3 to 63 lower-case letters, digits, dots and hyphens, beginning and ending with a letter or digit")
	case strings.Contains(b, ".."):
		return reason("two dots in a row")
	case strings.Contains(b, ".-") || strings.Contains(b, "-."):
		return reason("a dot next to a hyphen")
	case net.ParseIP(b) != nil:
		return reason("an IP address is not a bucket name")
	}
	return nil
}

func checkKey(k string) string {
	switch {
	case len(k) > 1024:
		return "longer than 1024 bytes"
	case !utf8.ValidString(k):
		return "not UTF-8"
	case strings.HasSuffix(k, "/"):
		return "ends in /: name the object, e.g. " + k + "openclaw.qcow2"
	case strings.ContainsAny(k, "?#"):
		return "? and # are not allowed (a query or fragment is not part of an object's name)"
	}
	for _, r := range k {
		if r < 0x20 || r == 0x7f {
			return "a control character"
		}
	}
	for _, s := range strings.Split(k, "/") {
		switch s {
		case "":
			return "an empty path segment (//)"
		case ".", "..":
			return "a . or .. segment"
		}
	}
	return ""
}

// parseEndpoint checks an S3 endpoint: https://HOST[:PORT], no user, path,
// query or fragment.
func parseEndpoint(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", usage("--endpoint: %v", err)
	}
	if u.User != nil {
		return "", usage("--endpoint: no credentials in the URL: they come from the environment or --credentials FILE")
	}
	if u.Scheme != "https" {
		return "", usage("--endpoint %s: want https://HOST[:PORT] (bake publish speaks only HTTPS)", s)
	}
	if u.Host == "" || u.Hostname() == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return "", usage("--endpoint %s: want https://HOST[:PORT], without a path", s)
	}
	return "https://" + u.Host, nil
}
