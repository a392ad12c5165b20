"""Root: the netlink layer (routes, neighbours) between two namespaces of its own."""
