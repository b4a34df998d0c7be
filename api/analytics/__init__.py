"""Usage analytics of the API (SPEC §8): readers over ClickHouse, the forecast, the cache.

:class:`~api.analytics.service.AnalyticsService` answers the three ``/usage`` routes;
:func:`~api.analytics.factory.open_usage_reader` picks how this process reads usage.
"""
