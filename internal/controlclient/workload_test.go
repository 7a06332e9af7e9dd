package controlclient

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"

	"github.com/nex-engine/nex/api"
)

// verifyWorkloadJWT checks a token as a node does: signature, standard
// claims, an account issuer.
func verifyWorkloadJWT(tok string) (*jwt.GenericClaims, error) {
	c, err := jwt.DecodeGeneric(tok) // verifies the signature
	if err != nil {
		return nil, fmt.Errorf("decode workload JWT: %w", err)
	}
	vr := jwt.CreateValidationResults()
	c.Validate(vr)
	if vr.IsBlocking(true) {
		return nil, fmt.Errorf("workload JWT invalid: %v", vr.Errors())
	}
	if !nkeys.IsValidPublicAccountKey(c.Issuer) {
		return nil, fmt.Errorf("issuer %s is not an account", c.Issuer)
	}
	return c, nil
}

func openEnvironment(nodeX nkeys.KeyPair, sender, b64 string) (map[string]string, error) {
	sealed, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, fmt.Errorf("environment is not std base64: %w", err)
	}
	plain, err := nodeX.Open(sealed, sender)
	if err != nil {
		return nil, fmt.Errorf("open environment: %w", err)
	}
	var env map[string]string
	if err := json.Unmarshal(plain, &env); err != nil {
		return nil, fmt.Errorf("environment is not a JSON object: %w", err)
	}
	return env, nil
}

func TestWorkloadJWTRoundTrip(t *testing.T) {
	issuer, _ := nkeys.CreateAccount()
	issPub, _ := issuer.PublicKey()
	hash, n, err := HashReader(strings.NewReader("hello"))
	if err != nil || n != 5 {
		t.Fatal(n, err)
	}
	if hash != "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" {
		t.Fatalf("sha256(hello) = %s", hash)
	}
	tok, err := WorkloadJWT(issuer, "echo", hash)
	if err != nil {
		t.Fatal(err)
	}
	c, err := verifyWorkloadJWT(tok)
	if err != nil {
		t.Fatal(err)
	}
	if c.Subject != "echo" || c.Issuer != issPub || c.Data["hash"] != hash || c.ID == "" || c.IssuedAt == 0 {
		t.Fatalf("claims = %+v", c)
	}
	// A tampered token fails verification.
	parts := strings.Split(tok, ".")
	other, _ := WorkloadJWT(issuer, "evil", hash)
	forged := strings.Join([]string{parts[0], strings.Split(other, ".")[1], parts[2]}, ".")
	if _, err := verifyWorkloadJWT(forged); err == nil {
		t.Fatal("a token with a swapped payload verified")
	}
}

func TestWorkloadJWTRefusesBadInput(t *testing.T) {
	issuer, _ := nkeys.CreateAccount()
	user, _ := nkeys.CreateUser()
	good := strings.Repeat("ab", 32)
	for _, c := range []struct {
		name, hash string
		kp         nkeys.KeyPair
	}{
		{"bad name!", good, issuer},
		{"echo", "xyz", issuer},
		{"echo", "abcd", issuer},
		{"echo", good, user}, // generic claims accept any issuer; we still want an account
	} {
		tok, err := WorkloadJWT(c.kp, c.name, c.hash)
		if c.kp == user {
			// jwt accepts it; a node's verification refuses it.
			if err == nil {
				if _, verr := verifyWorkloadJWT(tok); verr == nil {
					t.Errorf("user-signed JWT verified as a workload JWT")
				}
			}
			continue
		}
		if err == nil {
			t.Errorf("WorkloadJWT(%q, %q) succeeded", c.name, c.hash)
		}
	}
}

func TestStopJWTDiffersFromDeployJWT(t *testing.T) {
	issuer, _ := nkeys.CreateAccount()
	hash := strings.Repeat("0", 64)
	deployTok, err := WorkloadJWT(issuer, "echo", hash)
	if err != nil {
		t.Fatal(err)
	}
	deployed := time.Now()
	stopTok, err := StopJWT(context.Background(), issuer, "echo", deployed)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := verifyWorkloadJWT(deployTok)
	s, err := verifyWorkloadJWT(stopTok)
	if err != nil {
		t.Fatal(err)
	}
	if s.Subject != d.Subject || s.Issuer != d.Issuer {
		t.Fatalf("stop sub/iss %s/%s, deploy %s/%s", s.Subject, s.Issuer, d.Subject, d.Issuer)
	}
	if s.ID == d.ID || s.IssuedAt == d.IssuedAt {
		t.Fatalf("stop JWT jti/iat (%s/%d) equal the deploy's (%s/%d)", s.ID, s.IssuedAt, d.ID, d.IssuedAt)
	}
}

func TestStopJWTHonoursCancel(t *testing.T) {
	issuer, _ := nkeys.CreateAccount()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := StopJWT(ctx, issuer, "echo", time.Now().Add(time.Hour)); err == nil {
		t.Fatal("StopJWT ignored a cancelled context")
	}
}

func TestDeployedAt(t *testing.T) {
	now := time.Unix(1000, 600e6)
	for _, c := range []struct {
		uptime string
		want   int64
	}{
		{"10m15s", 1000 - 615 + 1}, // 385.6+0.5 s
		{"0s", 1001},
		{"", 1000},
		{"soon", 1000},
	} {
		if got := DeployedAt(c.uptime, now).Unix(); got != c.want {
			t.Errorf("DeployedAt(%q) = %d, want %d", c.uptime, got, c.want)
		}
	}
}

func TestSealEnvironmentRoundTrip(t *testing.T) {
	sender, _ := nkeys.CreateCurveKeys()
	senderPub, _ := sender.PublicKey()
	node, _ := nkeys.CreateCurveKeys()
	nodePub, _ := node.PublicKey()
	want := map[string]string{"nats_url": "nats://x:4222", "SECRET": "s3cr=t"}
	b64, err := SealEnvironment(sender, nodePub, want)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b64, "s3cr") {
		t.Fatal("plaintext visible in the sealed environment")
	}
	got, err := openEnvironment(node, senderPub, b64)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["SECRET"] != "s3cr=t" || got["nats_url"] != "nats://x:4222" {
		t.Fatalf("opened %v, want %v", got, want)
	}
	// Another node cannot open it.
	stranger, _ := nkeys.CreateCurveKeys()
	if _, err := openEnvironment(stranger, senderPub, b64); err == nil {
		t.Fatal("a different xkey opened the environment")
	}
	if _, err := SealEnvironment(sender, "NOTANXKEY", want); err == nil {
		t.Fatal("sealed to a non-curve key")
	}
}

func TestParseEnv(t *testing.T) {
	env, err := ParseEnv([]string{"a=1", "B=x=y", "EMPTY="})
	if err != nil || env["a"] != "1" || env["B"] != "x=y" || env["EMPTY"] != "" || len(env) != 3 {
		t.Fatalf("ParseEnv = %v, %v", env, err)
	}
	for _, bad := range []string{"novalue", "=v"} {
		if _, err := ParseEnv([]string{bad}); err == nil {
			t.Errorf("ParseEnv(%q) succeeded", bad)
		}
	}
}

func TestNamesAndTypesFromPaths(t *testing.T) {
	for _, c := range []struct{ path, name, typ string }{
		{"/tmp/echoservice", "echoservice", api.WorkloadNative},
		{"build/echo.service.bin", "echo-service", api.WorkloadNative},
		{"fn/hello.js", "hello", api.WorkloadV8},
		{"fn/Add One.WASM", "Add-One", api.WorkloadWasm},
		{"./.js", "workload", api.WorkloadV8},
	} {
		if got := NameFromPath(c.path); got != c.name {
			t.Errorf("NameFromPath(%q) = %q, want %q", c.path, got, c.name)
		}
		if err := ValidName(NameFromPath(c.path)); err != nil {
			t.Errorf("NameFromPath(%q) is not a valid name: %v", c.path, err)
		}
		if got := TypeFromPath(c.path); got != c.typ {
			t.Errorf("TypeFromPath(%q) = %q, want %q", c.path, got, c.typ)
		}
	}
}

func TestLocationMarshalsAsURLObject(t *testing.T) {
	loc, err := NATSLocation(DefaultBucket, "echo")
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(api.DeployRequest{Location: loc})
	if err != nil {
		t.Fatal(err)
	}
	var req struct {
		Location map[string]any `json:"location"`
	}
	if err := json.Unmarshal(b, &req); err != nil {
		t.Fatalf("location is not an object: %s", b)
	}
	if req.Location["Scheme"] != "nats" || req.Location["Host"] != DefaultBucket || req.Location["Path"] != "/echo" {
		t.Fatalf("location = %v", req.Location)
	}
	var back api.DeployRequest
	if err := json.Unmarshal(b, &back); err != nil || back.Location.String() != "nats://NEXCLIFILES/echo" {
		t.Fatalf("round trip = %v, %v", back.Location, err)
	}
}
