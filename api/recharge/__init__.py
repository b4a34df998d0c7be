"""Auto-recharge (SPEC §7, flow 6): settings, the recharge state machine and its worker.

``store.py`` (PostgreSQL: settings, recharges, outbox, notifications), ``charger.py`` (the
payment port), ``engine.py`` (observe a balance -> claim -> charge -> resolve) and ``worker.py``
(the background task: a ``wallet.events`` consumer group, a scheduler and the outbox publisher).
"""
