"""Scale-out behind a router's ECMP: the VIPs this director can serve are announced through
BIRD 2 (bird.py: a generated include of static /32 routes and BIRD's control socket;
announce.py: which VIPs may be announced, and when). Imports nothing of the engine.
"""
