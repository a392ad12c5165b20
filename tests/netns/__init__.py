"""Root: the ring backends (AF_XDP, AF_PACKET) over veth pairs in namespaces of their own."""
