"""settlement: the ledger (the only code that posts), batched settlement, reconciliation, sinks."""
