"""Reading, checking and batching data: file formats, datasets, media, meshes, samplers."""
