DROP TABLE IF EXISTS payment_refunds;
DROP TABLE IF EXISTS payment_webhooks;
DROP TABLE IF EXISTS payment_transitions;
DROP TABLE IF EXISTS payments;
