package controlclient_test

import (
	"context"
	"fmt"
	"os"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/nex-engine/nex/api"
	"github.com/nex-engine/nex/internal/controlclient"
	"github.com/nex-engine/nex/internal/natsd"
)

// Listing nodes: Ping returns once replies stop arriving. Here a stand-in
// answers $NEX.PING the way a node does, so the example runs on its own.
func ExampleClient_Ping() {
	dir, _ := os.MkdirTemp("", "nex-example")
	defer os.RemoveAll(dir)
	cp, err := natsd.StartControlPlane(natsd.ControlPlaneOptions{Port: -1, StoreDir: dir})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cp.Shutdown()
	nc, _ := nats.Connect(cp.ClientURL())
	defer nc.Close()

	nc.Subscribe(api.PingSubject(), func(m *nats.Msg) {
		b, _ := api.NewEnvelope(api.TypePingResponse, api.PingResponse{NodeID: "NEXAMPLE", Version: "1.0.0", Uptime: "1s"})
		m.Respond(b)
	})

	nodes, err := controlclient.New(nc).Ping(context.Background())
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, n := range nodes {
		fmt.Println(n.NodeID, n.Version)
	}
	// Output: NEXAMPLE 1.0.0
}

// Signing a workload: the JWT names the workload and pins the artifact's
// hash; the environment is sealed so that only the chosen node reads it.
func ExampleWorkloadJWT() {
	issuer, _ := nkeys.CreateAccount()
	hash := "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" // sha256("hello")
	tok, err := controlclient.WorkloadJWT(issuer, "echo", hash)
	if err != nil {
		fmt.Println(err)
		return
	}
	claims, _ := jwt.DecodeGeneric(tok)
	fmt.Println(claims.Subject, claims.Data["hash"] == hash)

	sender, _ := nkeys.CreateCurveKeys()
	node, _ := nkeys.CreateCurveKeys()
	nodeXkey, _ := node.PublicKey()
	env, _ := controlclient.SealEnvironment(sender, nodeXkey, map[string]string{"nats_url": "nats://127.0.0.1:4222"})
	fmt.Println(len(env) > 0)
	// Output:
	// echo true
	// true
}
