package agentapi

import (
	"strings"
	"testing"
)

func TestVsockURL(t *testing.T) {
	a := VsockAddr{CID: HostCID, Port: NATSVsockPort}
	if got := a.URL(); got != "vsock://2:4222" {
		t.Fatalf("URL = %q", got)
	}
	back, ok, err := ParseVsockURL(a.URL())
	if err != nil || !ok || back != a {
		t.Fatalf("ParseVsockURL(%q) = %+v, %v, %v", a.URL(), back, ok, err)
	}
}

func TestParseVsockURL(t *testing.T) {
	cases := []struct {
		raw     string
		ok      bool
		wantErr string
	}{
		{"nats://10.0.2.100:4222", false, ""},
		{"127.0.0.1:4222", false, ""},
		{"vsock://2", true, "want vsock://<cid>:<port>"},
		{"vsock://x:4222", true, "context id"},
		{"vsock://2:0", true, "bad port"},
		{"vsock://2:70000000000", true, "bad port"},
		{"vsock://-1:4222", true, "context id"},
	}
	for _, c := range cases {
		_, ok, err := ParseVsockURL(c.raw)
		if ok != c.ok {
			t.Errorf("%q: ok = %v, want %v", c.raw, ok, c.ok)
		}
		switch {
		case c.wantErr == "" && err != nil:
			t.Errorf("%q: %v", c.raw, err)
		case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
			t.Errorf("%q: err = %v, want one mentioning %q", c.raw, err, c.wantErr)
		}
	}
}

func TestCheckStagedName(t *testing.T) {
	ok := []string{"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "echo", "a.b-c_d", strings.Repeat("x", 128)}
	bad := []string{"", ".", "..", ".hidden", "a/b", "../etc", "a\\b", "a\x00b", "a b", "é", strings.Repeat("x", 129)}
	for _, n := range ok {
		if err := CheckStagedName(n); err != nil {
			t.Errorf("CheckStagedName(%q) = %v, want nil", n, err)
		}
	}
	for _, n := range bad {
		if err := CheckStagedName(n); err == nil {
			t.Errorf("CheckStagedName(%q) = nil, want an error", n)
		}
	}
}
