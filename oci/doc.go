// Package oci is the container images stage: it builds OCI images without a
// Docker daemon, deterministically, from pinned inputs (a Debian base made
// from packages, a Node runtime and an npm application from the npm
// registry), and resolves, pulls and writes images by reference
// (registries, OCI layouts, docker-archive tarballs).
package oci
