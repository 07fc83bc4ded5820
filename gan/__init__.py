"""The progressive encoder-decoder conditional GAN.

Lean by design: this package depends on torch, h5py and numpy only and never
imports ``dce.geom``; it consumes the HDF5 files that ``dce-build`` writes.
"""
