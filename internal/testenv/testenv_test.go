package testenv

import (
	"testing"
)

// fakeTB records how a test ended.
type fakeTB struct {
	testing.TB
	failed, skipped bool
}

func (f *fakeTB) Helper()               {}
func (f *fakeTB) Fatalf(string, ...any) { f.failed = true }
func (f *fakeTB) Skip(...any)           { f.skipped = true }

func TestNeedTools(t *testing.T) {
	for _, strict := range []string{"1", ""} {
		t.Setenv(StrictEnv, strict)
		f := &fakeTB{}
		NeedTools(f, "sh", "bake-no-such-tool-xyz")
		if strict == "1" && (!f.failed || f.skipped) {
			t.Errorf("strict: failed=%v skipped=%v, want a failure", f.failed, f.skipped)
		}
		if strict == "" && (f.failed || !f.skipped) {
			t.Errorf("not strict: failed=%v skipped=%v, want a skip", f.failed, f.skipped)
		}
		f = &fakeTB{}
		NeedTools(f, "sh")
		if f.failed || f.skipped {
			t.Errorf("sh is present: failed=%v skipped=%v", f.failed, f.skipped)
		}
	}
}
