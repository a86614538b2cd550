package e2estorage

import (
	"flag"
	"fmt"
	"os"
	"testing"

	"k8s.io/component-base/version"
	"k8s.io/kubernetes/test/e2e"
	"k8s.io/kubernetes/test/e2e/framework"
	"k8s.io/kubernetes/test/e2e/framework/config"
	"k8s.io/kubernetes/test/e2e/framework/testfiles"
	e2etestingmanifests "k8s.io/kubernetes/test/e2e/testing-manifests"

	// The feature and label constants must be defined before any test registers.
	_ "k8s.io/kubernetes/test/e2e/feature"
	// The only tests linked in: one "External Storage [Driver: NAME]" tree per
	// -storage.testdriver file.
	_ "k8s.io/kubernetes/test/e2e/storage/external"

	// The framework's optional parts, as the full e2e.test wires them: log and metrics
	// dumps on failure, and the node helpers' defaults.
	_ "k8s.io/kubernetes/test/e2e/framework/debug/init"
	_ "k8s.io/kubernetes/test/e2e/framework/metrics/init"
	_ "k8s.io/kubernetes/test/e2e/framework/node/init"
	_ "k8s.io/kubernetes/test/utils/format"
)

// TestMain registers the framework's flags (the driver file's among them), reads them and
// runs the ginkgo suite. Flags it does not know are an error, as in the full e2e.test.
func TestMain(m *testing.M) {
	showVersion := flag.CommandLine.Bool("version", false, "print the Kubernetes version the suite was built from")
	config.CopyFlags(config.Flags, flag.CommandLine)
	framework.RegisterCommonFlags(flag.CommandLine)
	framework.RegisterClusterFlags(flag.CommandLine)
	flag.Parse()
	if *showVersion {
		fmt.Println(version.Get())
		os.Exit(0)
	}
	if flag.CommandLine.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "unknown arguments: %v\n", flag.CommandLine.Args())
		os.Exit(2)
	}
	// Some storage tests read manifests (e.g. the snapshot CRDs' checks) from the
	// suite's embedded files.
	testfiles.AddFileSource(e2etestingmanifests.GetE2ETestingManifestsFS())
	framework.AfterReadingAllFlags(&framework.TestContext)
	// The driver file's StorageClass and snapshot class files are named relative to
	// -repo-root (csi-py's checkout).
	if framework.TestContext.RepoRoot != "" {
		testfiles.AddFileSource(testfiles.RootFileSource{Root: framework.TestContext.RepoRoot})
	}
	os.Exit(m.Run())
}

// TestE2E runs every selected spec through ginkgo, with the framework's reporters.
func TestE2E(t *testing.T) {
	e2e.RunE2ETests(t)
}
