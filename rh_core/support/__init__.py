"""Small helpers every layer may use and that use no other part of rh_core but its errors: files
other users may reach, processes, paths, keeping secrets out of text, Python compatibility, S3."""
