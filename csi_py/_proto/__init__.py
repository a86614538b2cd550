"""Generated CSI v1.13 protobuf/gRPC code lives here; do not edit it by hand.

Regenerate from proto/csi.proto with hack/gen-proto (hack/gen-proto --check verifies it is
up to date).
"""
