"""`fastlvs replay` end to end: pcaps in, pcaps and --stats JSON out."""
