"""A MIMIC-CXR release: the reader, pixel decoding, report text, how a release becomes store items,
and a new release's diff against a store."""
