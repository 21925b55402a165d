DROP TABLE billing_errors;
