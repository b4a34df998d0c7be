"""Lua sources of the wallet mirror (a package so wheels ship the ``*.lua`` files)."""
