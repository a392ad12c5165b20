"""fastlvs: a Linux Virtual Server director in user space.

The scheduler library (`fastlvs.schedulers`) is pure Python and imports nothing of the fast
path; the compiled engine lives in `fastlvs.engine._core` and is only imported by the layers that
drive it.
"""
__version__ = "0.1.0"
