"""Starting pipelines: on this machine (kfp.local, in-process or in containers), compiled for a
cluster, or submitted and scheduled there."""
