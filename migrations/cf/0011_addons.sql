-- Add-ons: bought on top of a plan in any quantity, each unit priced per interval. Seeded from
-- the stable rule bundle's manifest like plans (the sold set is exactly the last seeded one; a
-- dropped add-on stays for the subscriptions that hold it, unsold). What a subscription holds is
-- part of its terms (`subscriptions.terms->'addons'`: key, quantity and the unit price it was
-- sold at), so renewals bill the price sold, whatever the catalog says later.
CREATE TABLE addons (
    key          text PRIMARY KEY,
    name         text NOT NULL,
    price_minor  bigint NOT NULL CHECK (price_minor >= 0),
    currency     char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    interval     text NOT NULL CHECK (interval IN ('month', 'year')),
    -- [{feature, effect}], effect `"grant"` or `{"add_limit": n}` per unit.
    effects      jsonb NOT NULL DEFAULT '[]',
    sold         boolean NOT NULL,
    position     int UNIQUE,
    CONSTRAINT addons_sold_positioned CHECK (sold = (position IS NOT NULL))
);
