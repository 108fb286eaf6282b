"""Storage (S3 and local), staging folders, output claims, the local S3 server, and console tables
and progress."""
