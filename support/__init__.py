"""Support code: files, downloads, weights, precision and memory, resuming, tokenizers, decoding, interchange, plots.
The method and the loop are at the root (README, "The code in reading order")."""
