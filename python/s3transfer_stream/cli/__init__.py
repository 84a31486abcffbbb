"""Command-line programs of s3transfer-stream."""
