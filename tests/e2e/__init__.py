"""Root: whole clusters in namespaces (fastlvs.lab.testbed) with the daemon and real clients."""
