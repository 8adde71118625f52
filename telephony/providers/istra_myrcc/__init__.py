"""Centile Istra myRCC (enterprise remote call control): see transport.py."""
