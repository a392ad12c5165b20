"""The built engine over packet cases made with scapy (packets.py), every output re-parsed."""
