package node

import (
	"net/url"
	"strconv"

	"github.com/nats-io/nats.go"
)

type natsMsg = nats.Msg

func urlParse(s string) (*url.URL, error) { return url.Parse(s) }

func itoa(i int) string { return strconv.Itoa(i) }
func atoi(s string) int { i, _ := strconv.Atoi(s); return i }
