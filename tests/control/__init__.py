"""The control socket and `fastlvs admin` over a real engine (control_harness.py)."""
