// Package e2estorage is the entry point of the k8s storage suite that hack/k8s-storage-e2e
// runs against csi-py: Kubernetes' e2e framework with only the External Storage tests linked
// in (test/e2e/storage/external, which reads -storage.testdriver), so that `go test -c` of
// this package builds a much smaller e2e.test than the whole of test/e2e (the directory is
// called e2e so that the binary is called e2e.test). The code is in e2e_test.go.
package e2estorage
