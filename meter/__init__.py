"""meter: the usage-event contract, its validation, and the producer SDK services call."""
