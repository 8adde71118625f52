"""Centile Istra myCrm (end user, per terminal): see transport.py."""
