DROP TABLE IF EXISTS wallet_notifications;
DROP TABLE IF EXISTS auto_recharge_outbox;
DROP TABLE IF EXISTS auto_recharges;
DROP TABLE IF EXISTS auto_recharge_settings;
