// Package sourcedate makes a tree's file times independent of when it was
// built (SOURCE_DATE_EPOCH). The tree stage (rootfs), the cloud stage and
// the container stage's extracted image layers (oci) use it before a tree
// becomes a filesystem or a layer.
package sourcedate
