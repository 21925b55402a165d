-- How finance settled an invoice outside the payment rail: paid (a wire, a cheque), void
-- (cancelled, with a credit note for its total) or written off (uncollectible). At most one
-- per invoice; the invoice's status follows it in the same transaction.
CREATE TABLE invoice_settlements (
    account text NOT NULL,
    number bigint NOT NULL,
    kind text NOT NULL CHECK (kind IN ('paid', 'void', 'write_off')),
    amount numeric(28, 9) NOT NULL CHECK (amount >= 0),
    -- When it was paid (finance's date) or when it was voided or written off.
    settled_at timestamptz NOT NULL,
    reference text NULL,
    reason text NULL,
    -- The key that settled it (its name and id).
    settled_by text NOT NULL,
    -- Credit restored to the account's balance (a voided invoice's credit_applied lines).
    credit_restored numeric(28, 9) NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (account, number),
    FOREIGN KEY (account, number) REFERENCES invoices (account, number)
);
