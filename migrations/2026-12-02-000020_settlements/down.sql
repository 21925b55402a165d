DROP TABLE invoice_settlements;
