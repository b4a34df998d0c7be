"""aggregator: streaming authorisation (caps, rate limits, Redis pre-authorisation, anomalies)."""
