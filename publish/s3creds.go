package publish

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
)

// s3Credentials finds the S3 credentials, never on the command line:
//
//  1. --credentials FILE: an AWS shared credentials file (INI), the
//     profile $AWS_PROFILE or "default";
//  2. $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY (and
//     $AWS_SESSION_TOKEN);
//  3. $AWS_SHARED_CREDENTIALS_FILE, else ~/.aws/credentials, as in 1.
//
// It returns them and where they came from (for messages; never the
// secret).
func s3Credentials(file string) (aws.Credentials, string, error) {
	profile := os.Getenv("AWS_PROFILE")
	if profile == "" {
		profile = "default"
	}
	if file != "" {
		c, err := readCredentialsFile(file, profile)
		if err != nil {
			return aws.Credentials{}, "", usage("--credentials: %v", err)
		}
		return c, fmt.Sprintf("%s [%s]", file, profile), nil
	}
	id, secret := os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY")
	if id != "" || secret != "" {
		if id == "" || secret == "" {
			return aws.Credentials{}, "", usage("S3 credentials: set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (only one is set)")
		}
		return aws.Credentials{AccessKeyID: id, SecretAccessKey: secret, SessionToken: os.Getenv("AWS_SESSION_TOKEN"), Source: "environment"}, "the environment (AWS_ACCESS_KEY_ID)", nil
	}
	file = os.Getenv("AWS_SHARED_CREDENTIALS_FILE")
	if file == "" {
		if home, err := os.UserHomeDir(); err == nil {
			file = filepath.Join(home, ".aws", "credentials")
		}
	}
	if file != "" {
		c, err := readCredentialsFile(file, profile)
		if err == nil {
			return c, fmt.Sprintf("%s [%s]", file, profile), nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return aws.Credentials{}, "", usage("S3 credentials: %v", err)
		}
	}
	return aws.Credentials{}, "", usage("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment, or name an AWS credentials file with --credentials FILE (or AWS_SHARED_CREDENTIALS_FILE, or ~/.aws/credentials)")
}

// readCredentialsFile reads aws_access_key_id, aws_secret_access_key and
// aws_session_token from [profile] of an AWS shared credentials file.
func readCredentialsFile(path, profile string) (aws.Credentials, error) {
	f, err := os.Open(path)
	if err != nil {
		return aws.Credentials{}, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return aws.Credentials{}, err
	} else if !fi.Mode().IsRegular() || fi.Size() > 1<<20 {
		return aws.Credentials{}, fmt.Errorf("%s: not a regular file of at most 1 MiB", path)
	}
	var c aws.Credentials
	section, seen := "", false
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if strings.HasPrefix(line, "[") {
			if !strings.HasSuffix(line, "]") {
				return aws.Credentials{}, fmt.Errorf("%s:%d: a section header without ]", path, n)
			}
			section = strings.TrimSpace(strings.TrimPrefix(line[1:len(line)-1], "profile "))
			if section == profile {
				seen = true
			}
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			// Not echoed: the line may hold a secret.
			return aws.Credentials{}, fmt.Errorf("%s:%d: not KEY = VALUE", path, n)
		}
		if section != profile {
			continue
		}
		v = strings.TrimSpace(v)
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "aws_access_key_id":
			c.AccessKeyID = v
		case "aws_secret_access_key":
			c.SecretAccessKey = v
		case "aws_session_token":
			c.SessionToken = v
		}
	}
	if err := sc.Err(); err != nil {
		return aws.Credentials{}, fmt.Errorf("%s: %w", path, err)
	}
	if !seen {
		return aws.Credentials{}, fmt.Errorf("%s: no [%s] profile", path, profile)
	}
	if c.AccessKeyID == "" || c.SecretAccessKey == "" {
		return aws.Credentials{}, fmt.Errorf("%s [%s]: aws_access_key_id and aws_secret_access_key are both needed", path, profile)
	}
	c.Source = "file"
	return c, nil
}
