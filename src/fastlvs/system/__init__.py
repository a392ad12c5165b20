"""What fastlvs asks of and sets in the kernel around it: rtnetlink (netlink.py), the nftables
ingress drop (nft.py) and NAPI placement (napi.py). Nothing here knows about services or
schedulers; the daemon drives it.
"""
