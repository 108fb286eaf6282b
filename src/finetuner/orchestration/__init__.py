"""The pipeline steps as plain functions, and what KFP components need around them (cluster
settings, failure reports)."""
