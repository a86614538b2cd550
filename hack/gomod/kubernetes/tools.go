//go:build tools

// Package tools records the Kubernetes commands hack/cluster builds and the test tools
// hack/k8s-storage-e2e builds (ginkgo, agnhost for the suite's images), so that `go mod tidy`
// keeps every module they need in go.sum. It is never compiled.
package tools

import (
	_ "github.com/onsi/ginkgo/v2/ginkgo"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/test/images/agnhost"
)
