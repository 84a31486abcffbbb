//go:build tools

// Package tools only exists so that `go mod tidy` keeps SeaweedFS's whole
// dependency graph (of the package github.com/seaweedfs/seaweedfs/weed) in
// go.mod/go.sum. Nothing here is compiled: services/seaweedfs.sh runs
//
//	go build -o "$S3TS_HOME/bin/weed-<version>" github.com/seaweedfs/seaweedfs/weed
//
// in this directory.
package tools

import _ "github.com/seaweedfs/seaweedfs/weed"
