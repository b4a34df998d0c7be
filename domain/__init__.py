"""Pure domain core of CommDesk Credits: money, packs, pricing, caps, ledger rules.

Nothing in this package performs I/O; adapters in the role packages call it.
"""
