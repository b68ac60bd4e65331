package verify

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/bakeimg/bake/claims"
	"github.com/bakeimg/bake/cloudimg"
)

var checkImageClaims = Check{ID: "image.claims", Scope: ScopeImage,
	Needs: "debugfs (e2fsprogs); free space in $TMPDIR (a qcow2 is read as raw)",
	claim: func(Spec, *GatewaySpec) string {
		return "the image carries bake's record of its claims (" + claims.RecordPath + "), and it agrees with --recipe when one is given: the claims checked are the image's own"
	}}

// prepareRaw makes r.raw: the image when it is raw, else a sparse raw copy
// in the work dir, with the reader the build uses for base images.
func (r *runner) prepareRaw(ctx context.Context) {
	if r.rep.Format == "raw" {
		r.raw = r.o.Image
		return
	}
	raw := filepath.Join(r.work, "disk.raw")
	r.logf("converting the image to raw for the claims record and the secret scan (%s)", raw)
	if err := toRaw(ctx, r.o.Image, raw); err != nil {
		os.Remove(raw)
		r.rawErr = fmt.Errorf("converting the image to raw (needs free space in $TMPDIR for its data): %w", err)
		return
	}
	r.raw = raw
}

// removeRaw removes the raw copy once the checks that read it are done.
func (r *runner) removeRaw() {
	if r.raw != "" && r.raw != r.o.Image {
		os.Remove(r.raw)
	}
}

// claimsRecord reads the image's record of its claims and records
// image.claims. Without --recipe the record's claims are the ones checked
// (r.o.Spec); with --recipe the recipe's are, and a record that differs
// fails. Without a record (an image bake did not build, or built before
// it wrote one) the check could not run: the run fails unless
// --allow-skip image.claims, and the claims checked are the recipe's or
// the appliance's defaults.
func (r *runner) claimsRecord(ctx context.Context) {
	t0 := time.Now()
	id := checkImageClaims.ID
	using := "the claims checked are " + r.o.Spec.Source
	if r.rawErr != nil {
		r.record("", id, Skip, "not run: "+r.rawErr.Error()+"; "+using, time.Since(t0))
		return
	}
	b, err := cloudimg.ReadRootFile(ctx, r.raw, claims.RecordPath, claims.MaxRecord)
	if ctx.Err() != nil {
		return
	}
	if errors.Is(err, fs.ErrNotExist) {
		r.record("", id, Skip, fmt.Sprintf("not run: the image has no %s (not built by bake, or by a bake older than the record); %s", claims.RecordPath, using), time.Since(t0))
		return
	}
	if err != nil {
		r.record("", id, Fail, fmt.Sprintf("the image's record %s cannot be read: %v; %s", claims.RecordPath, err, using), time.Since(t0))
		return
	}
	rec, err := claims.ParseRecord(b)
	if err != nil {
		r.record("", id, Fail, fmt.Sprintf("%v; %s", err, using), time.Since(t0))
		return
	}
	if r.o.Recipe == "" {
		r.o.Spec = rec
		r.rep.Claims = rec.Source
		r.logf("claims: %s", rec.Source)
		r.record("", id, Pass, fmt.Sprintf("no --recipe: the claims checked are the image's record (%s): admin %s, SSH port %d%s", claims.RecordPath, rec.AdminUser, rec.SSHPort, gatewayWord(rec)), time.Since(t0))
		return
	}
	if d := claims.Diff(r.o.Spec, rec, "the recipe", "the image's record"); len(d) > 0 {
		r.record("", id, Fail, fmt.Sprintf("the image was not built from this recipe (or with other --set values): its record %s differs: %s; the recipe's claims are checked", claims.RecordPath, strings.Join(d, "; ")), time.Since(t0))
		return
	}
	r.record("", id, Pass, fmt.Sprintf("the image's record %s agrees with the recipe", claims.RecordPath), time.Since(t0))
}

func gatewayWord(s Spec) string {
	if s.Gateway == nil {
		return ", no gateway"
	}
	return fmt.Sprintf(", gateway %s on port %d (%s mode)", s.Gateway.Container, s.Gateway.Port, s.Gateway.Mode)
}
