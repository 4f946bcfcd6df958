// Command etcd is etcd's own entry point, built through a wrapper module because the
// upstream server module's replace directives make a plain `go install` impossible.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
