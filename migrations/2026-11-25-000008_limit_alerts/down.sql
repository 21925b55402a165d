DROP TABLE limit_alerts;
