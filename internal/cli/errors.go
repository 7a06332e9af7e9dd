package cli

import "errors"

var errNotYet = errors.New("not implemented yet")
