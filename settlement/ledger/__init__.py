"""The ledger: schema, the one module that posts (:mod:`settlement.ledger.writer`), the verifier."""
