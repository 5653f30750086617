"""Files: atomic writes and JSON, hashing, finding and reading input images, writing output maps."""
