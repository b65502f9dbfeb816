"""The bottom layer: settings, the GPU probe, masking of secrets, shared constants, registries, error text.

Every other package may import from here; nothing here imports a package above it.
"""
