-- PayPal billing agreements (Braintree's vault) beside cards. Each method remembers the
-- provider customer it is attached to (a vaulted method cannot move to another customer), so a
-- charge needs nothing but the method's row; the account remembers its Braintree customer.
ALTER TABLE payment_methods
    ADD COLUMN kind text NOT NULL DEFAULT 'card' CHECK (kind IN ('card', 'paypal')),
    ADD COLUMN payer_email text,
    ADD COLUMN gateway_customer_id text;
UPDATE payment_methods pm SET gateway_customer_id = a.gateway_customer_id
  FROM accounts a WHERE a.id = pm.account_id;
ALTER TABLE payment_methods ALTER COLUMN gateway_customer_id SET NOT NULL;
ALTER TABLE payment_methods ALTER COLUMN kind DROP DEFAULT;
-- A charge attempt names its method by the provider's id: found again by it.
CREATE INDEX payment_methods_provider ON payment_methods (account_id, gateway, gateway_pm_id);

ALTER TABLE accounts ADD COLUMN paypal_customer_id text;
