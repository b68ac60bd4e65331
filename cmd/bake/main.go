// Command bake bakes hardened, immutable appliance disk images. The CLI
// lives in package cli so that tests can call it in-process.
package main

import (
	"os"

	"github.com/bakeimg/bake/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }
