-- Usage alerts already announced: each threshold (50/80/100 % of a limit) and the first
-- refused request ("hit", threshold 0) once per account, meter and period.
CREATE TABLE limit_alerts (
    account text NOT NULL REFERENCES accounts (account),
    meter text NOT NULL,
    period_start timestamptz NOT NULL,
    threshold smallint NOT NULL CHECK (threshold IN (0, 50, 80, 100)),
    at timestamptz NOT NULL,
    PRIMARY KEY (account, meter, period_start, threshold)
);
