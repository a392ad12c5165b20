"""`python -m fastlvs` is the `fastlvs` command."""
import sys

from fastlvs.cli import main

sys.exit(main())
