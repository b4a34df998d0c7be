"""Start and stop the auto-recharge worker with the API process."""

from __future__ import annotations

import logging

from api.payments.service import PaymentService
from api.recharge.charger import RechargeCharger
from api.recharge.engine import RechargeEngine
from api.recharge.payments_adapter import PaymentServiceCharger
from api.recharge.worker import RechargeWorker, WorkerConfig
from api.services import ApiServices

log = logging.getLogger(__name__)


def charger_for(services: ApiServices) -> RechargeCharger | None:
    """The payment service behind the recharge port, if this process runs payments."""
    if services.recharge_charger is not None:
        return services.recharge_charger
    payments: PaymentService | None = getattr(services, "payments", None)
    return PaymentServiceCharger(payments) if payments is not None else None


async def start_recharge_worker(services: ApiServices) -> None:
    """An app starter: run the worker; it stops (by its event) before the clients close."""
    if not services.config.auto_recharge_worker:
        return
    charger = charger_for(services)
    if charger is None:
        log.warning("auto-recharge worker not started: this process has no payment service")
        return
    engine = RechargeEngine(services.recharge, charger, services.clock, services.mirror)
    config = WorkerConfig(bootstrap=services.config.kafka_bootstrap, topics=services.config.topics)
    worker = RechargeWorker(engine, services.producer, config, services.clock)
    await worker.start()
    services.recharge_worker = worker
    services.exits.push_async_callback(worker.stop)
