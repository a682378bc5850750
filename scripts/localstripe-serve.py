#!/usr/bin/env python3
"""Serve localstripe (a fake Stripe API) for Tollgate's Stripe gateway tests.

Usage:
    pip install localstripe          # tested with localstripe 1.15.10, aiohttp 3.14
    python3 scripts/localstripe-serve.py [--host 127.0.0.1] [--port 8420]
                                         [--state PATH] [--from-scratch]

Then point `StripeGateway::new("sk_test_anything", Some("http://127.0.0.1:8420"))` at it.
Any `sk_…` key is accepted (`Authorization: Bearer sk_test_123`).

What this launcher changes compared to `python -m localstripe`
==============================================================

Listening and state
-------------------
* Listens on `--host` (default 127.0.0.1) and `--port` (default 8420) only; a host that is
  not a loopback address is refused.  Upstream binds `::` (every interface) instead.
* Keeps its state in the pickle given by `--state` (default
  `$TMPDIR/tollgate-localstripe-<port>.pickle`) instead of the fixed `/tmp/localstripe.pickle`:
  `Store.try_load_from_disk` / `Store.dump_to_disk` are replaced (the new dump writes a
  temporary file and renames it, so a crash never leaves a torn pickle).  `--from-scratch`
  ignores (and overwrites) an existing state file.  `DELETE /_config/data` still wipes it.

Idempotency (upstream ignores `Idempotency-Key`)
-----------------------------------------------
* A POST carrying `Idempotency-Key` has its response (status + body) saved in the store under
  `idempotency:<sha256(api key, key)>`, with a fingerprint of method, path, query and body.
  A later POST with the same key and the same request gets the saved response back, with the
  header `Idempotent-Replayed: true`; with a different request it gets Stripe's 400
  `idempotency_error`.  5xx, 401, 409 and 429 answers are not saved (nothing was executed, or
  the launcher crashed), so a retry runs again.  Saved keys survive restarts (they live in the
  pickle) and never expire.

Stripe test payment-method ids (`PaymentMethod._try_get_canonical_test_article`)
--------------------------------------------------------------------------------
Upstream knows `pm_card_visa`, `pm_card_visa_chargeDeclined` and `pm_card_chargeCustomerFail`.
This table adds the others Tollgate uses; like Stripe, each use clones a new `pm_…` object:

    pm_card_visa                    4242424242424242  succeeds
    pm_card_mastercard              5555555555554444  succeeds (brand mastercard)
    pm_card_threeDSecure2Required   4000000000003220  3DS on set-up and on every on-session
                                                      payment; off-session payments decline
                                                      with authentication_required
    pm_card_authenticationRequired  4000002760003184  same behaviour as above
    pm_card_chargeDeclined          4000000000000002  declined (generic_decline) on set-up
                                                      and on every charge
    pm_card_visa_chargeDeclined     4000000000000002  (upstream alias, kept)
    pm_card_chargeCustomerFail      4000000000000341  attaches fine, every charge declines
                                                      (card_declined / generic_decline)

`card.brand` is derived from the number (upstream always says `visa`), and `display_brand`
is set to the same value.  Cards upstream declines on attach (4000000000000002, …9995, …9987,
…9979, …0069, …0127, …0119, 4242424242424241) now also decline when charged directly, as on
Stripe (upstream charged them successfully), each with Stripe's code / decline_code.

SetupIntents
------------
* `POST /v1/setup_intents` accepts `payment_method`, `confirm`, `description` and
  `allowed_payment_method_types` (async-stripe 1.0.0-rc.10 targets API version
  2026-09-30.endive, where the create parameter `payment_method_types` is called
  `allowed_payment_method_types`; it is stored as `payment_method_types`).  With
  `confirm=true` the intent is confirmed in the same request, as Stripe does.  Test ids are
  resolved to their cloned `pm_…` first.
* A declined card leaves the intent in `requires_payment_method` (upstream: `canceled`) with
  `last_setup_error` = the card error and `payment_method` = null, and the 402 error carries
  `type: card_error`, `decline_code`, `setup_intent` and `payment_method` like Stripe's.
* When a SetupIntent with a customer succeeds, its PaymentMethod is attached to that
  customer (upstream never attaches it).
* 3-D Secure completion: upstream's way still works — `POST /v1/setup_intents/{id}/confirm`
  again without a payment method completes it, `POST /v1/setup_intents/{id}/cancel` fails it
  (cancels).  Added for symmetry with PaymentIntents:
      POST /v1/setup_intents/{id}/_authenticate?success=true|false   (form: client_secret=…)
  `success=false` leaves `requires_payment_method` with a `last_setup_error` of code
  `setup_intent_authentication_failure`, as Stripe does.

PaymentIntents
--------------
* `POST /v1/payment_intents` accepts `description` and `allowed_payment_method_types` (see
  above), and `off_session` may also be `one_off` / `recurring`.
* `off_session=true` with a card that requires authentication fails like Stripe: 402
  `card_error` with code and decline_code `authentication_required`, and the intent goes to
  `requires_payment_method` (upstream asks for 3DS even off-session).
* A declined charge answers 402 with `type: card_error` (upstream: `invalid_request_error`),
  `decline_code`, `charge`, `payment_intent` (the whole object) and `payment_method`.
* `last_payment_error` has Stripe's full shape (`type` is required by async-stripe).
* Canceling an intent that is no longer cancelable answers 400 with Stripe's code
  `payment_intent_unexpected_state` (upstream: a bare "Bad request").
* 3-D Secure completion is upstream's:
      POST /v1/payment_intents/{id}/_authenticate?success=true|false   (form: client_secret=…)
  `success=true` charges the card; `success=false` leaves `requires_payment_method` with
  `last_payment_error.code = payment_intent_authentication_failure`.

Products and Prices (Tollgate mirrors its plans to them)
-------------------------------------------------------
* Upstream has Products but no Prices.  Added: `POST /v1/prices` (`product`, `currency`,
  `unit_amount`, `recurring[interval]` = day|week|month|year, `recurring[interval_count]`,
  `lookup_key`, `transfer_lookup_key`, `nickname`, `active`, `metadata`),
  `GET /v1/prices/{id}`, `POST /v1/prices/{id}` (`active`, `nickname`, `metadata`,
  `lookup_key`, `transfer_lookup_key`), and `GET /v1/prices` filtered by `lookup_keys[]`,
  `product`, `active`.  Like Stripe, a lookup key names one price: creating another price under
  it is refused (400) unless `transfer_lookup_key=true` moves it; the amount, currency and
  interval of a price never change.
* Creating a product with an `id` that exists answers Stripe's 400 `resource_already_exists`
  (upstream: a bare 409 "Conflict", which clients would retry forever).

Which launcher is answering
---------------------------
* `GET /_config/launcher` answers `{"sha256": <hash of this file>}`, so `scripts/lib.sh`
  can tell a localstripe started from an older version of this launcher (one without a route
  the tests need) from the current one, and restart it.

Response fields filled in (async-stripe 1.0.0-rc.10 requires them; upstream omits them)
------------------------------------------------------------------------------------
Every JSON response is walked, and every object inside it (also nested ones, e.g. the
`payment_intent` in an error or the `data` of a list) is completed by its `object` type:

    payment_intent  amount_received      required; = amount once succeeded, else 0
                    amount_capturable    required; = amount while requires_capture, else 0
                    confirmation_method  required; "automatic" (Stripe's default)
                    payment_method_types required; upstream never stores it; ["card"]
                    metadata             required; {} if absent
                    description          optional; null when upstream has no value
                    latest_charge        upstream embeds the whole Charge; Stripe returns its
                                         id unless expanded, and the embedded Charge lacks
                                         many fields async-stripe requires -> collapsed to id
                    charges              removed from the API in 2022; dropped (it embeds
                                         full Charges as well)
    setup_intent    payment_method_types required; ["card"] if absent
                    usage                required; "off_session" if absent
                    last_setup_error, description: null when absent (optional)
    payment_method  billing_details      required; {} if absent
                    card.funding         required; "credit" if absent
    product         images, marketing_features ([]), updated (= created), and null for
                    the optional fields upstream lacks (default_price, unit_label, …)
    price           billing_scheme "per_unit", type recurring|one_time, and null for the
                    optional fields (tiers, transform_quantity, …)
    error bodies    error.type           required; "invalid_request_error" if absent, and
                                         "api_error" for 5xx
                    error.code           "resource_missing" on 404 (Stripe's code)

Non-JSON failures are turned into Stripe error bodies so clients can parse them: an unknown
URL (aiohttp's plain-text 404/405) becomes `invalid_request_error`, and an exception inside
localstripe becomes a 500 `api_error` (upstream: aiohttp's plain-text 500).

Customer and Refund responses already have every field async-stripe requires (`id`,
`created`, `livemode`; Refund also `amount`, `currency`) and are not changed.
"""

import argparse
import asyncio
import hashlib
import ipaddress
import json
import logging
import os
import pickle
import sys
import tempfile

from aiohttp import web

try:
    from localstripe import resources as R
    from localstripe import server as S
    from localstripe.errors import UserError
except ImportError:  # pragma: no cover - a setup problem, reported plainly
    sys.exit('localstripe is not installed: pip install localstripe')

log = logging.getLogger('localstripe-serve')


# ---------------------------------------------------------------------------------------------
# State file
# ---------------------------------------------------------------------------------------------

def patch_state_path(path):
    """Makes localstripe's Store read and write `path` instead of /tmp/localstripe.pickle."""

    def try_load_from_disk(self):
        try:
            with open(path, 'rb') as f:
                old = pickle.load(f)
        except FileNotFoundError:
            return
        self.clear()
        self.update(old)

    def dump_to_disk(self):
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix='.localstripe-', dir=directory)
        try:
            with os.fdopen(fd, 'wb') as f:
                pickle.dump(dict(self), f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    R.Store.try_load_from_disk = try_load_from_disk
    R.Store.dump_to_disk = dump_to_disk


# ---------------------------------------------------------------------------------------------
# Test cards
# ---------------------------------------------------------------------------------------------

# Stripe test payment-method id -> card number.
TEST_PAYMENT_METHODS = {
    'pm_card_visa': '4242424242424242',
    'pm_card_mastercard': '5555555555554444',
    'pm_card_threeDSecure2Required': '4000000000003220',
    'pm_card_authenticationRequired': '4000002760003184',
    'pm_card_chargeDeclined': '4000000000000002',
    'pm_card_visa_chargeDeclined': '4000000000000002',
    'pm_card_chargeCustomerFail': '4000000000000341',
}

# Card numbers localstripe declines when attached / set up: (code, decline_code, message).
ATTACH_DECLINES = {
    '4000000000000002': ('card_declined', 'generic_decline', 'Your card was declined.'),
    '4000000000009995': ('card_declined', 'insufficient_funds',
                         'Your card has insufficient funds.'),
    '4000000000009987': ('card_declined', 'lost_card', 'Your card was declined.'),
    '4000000000009979': ('card_declined', 'stolen_card', 'Your card was declined.'),
    '4000000000000069': ('expired_card', 'expired_card', 'Your card has expired.'),
    '4000000000000127': ('incorrect_cvc', 'incorrect_cvc',
                         "Your card's security code is incorrect."),
    '4000000000000119': ('processing_error', 'processing_error',
                         'An error occurred while processing your card. '
                         'Try again in a little bit.'),
    '4242424242424241': ('incorrect_number', None, 'Your card number is incorrect.'),
}

# Card numbers whose charges localstripe declines.
CHARGE_DECLINES = {
    '4000000000000341': ('card_declined', 'generic_decline', 'Your card was declined.'),
    '4000008260003178': ('card_declined', 'insufficient_funds',
                         'Your card has insufficient funds.'),
    '4000008400001629': ('card_declined', 'generic_decline', 'Your card was declined.'),
}
GENERIC_DECLINE = ('card_declined', 'generic_decline', 'Your card was declined.')
AUTHENTICATION_REQUIRED = ('authentication_required', 'authentication_required',
                           'Your card was declined. This transaction requires authentication.')


def card_brand(number):
    if number.startswith('4'):
        return 'visa'
    if number[:2] in ('51', '52', '53', '54', '55') or '2221' <= number[:4] <= '2720':
        return 'mastercard'
    if number[:2] in ('34', '37'):
        return 'amex'
    if number.startswith('6011') or number.startswith('65'):
        return 'discover'
    return 'unknown'


def patch_payment_methods():
    original_init = R.PaymentMethod.__init__

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        if self.type == 'card':
            brand = card_brand(self._card_number)
            self.card['brand'] = brand
            self.card['display_brand'] = brand

    def _try_get_canonical_test_article(cls, id):
        number = TEST_PAYMENT_METHODS.get(id)
        if number is None:
            return None
        return R.PaymentMethod(type='card', card=dict(number=number, exp_month='12',
                                                      exp_year='2034', cvc='123'))

    original_charging_is_declined = R.PaymentMethod._charging_is_declined

    def _charging_is_declined(self):
        # Upstream only declines attaching these cards; Stripe declines their charges too.
        return original_charging_is_declined(self) or card_number(self) in ATTACH_DECLINES

    R.PaymentMethod.__init__ = __init__
    R.PaymentMethod._try_get_canonical_test_article = classmethod(_try_get_canonical_test_article)
    R.PaymentMethod._charging_is_declined = _charging_is_declined


def card_number(pm):
    return getattr(pm, '_card_number', None)


def card_error(decline, pm=None, **extra):
    """A Stripe `card_error` object (the body of `error`, or a `last_*_error`)."""
    code, decline_code, message = decline
    err = {
        'type': 'card_error',
        'code': code,
        'message': message,
        'doc_url': 'https://stripe.com/docs/error-codes/' + code.replace('_', '-'),
    }
    if decline_code:
        err['decline_code'] = decline_code
    if pm is not None:
        err['payment_method'] = pm._export()
    err.update(extra)
    return err


def raise_card_error(err, **objects):
    contents = dict(err)
    contents.update(objects)
    e = UserError(402, err['message'], contents)
    e.body['error']['type'] = 'card_error'  # UserError always says invalid_request_error
    raise e


def to_bool(value, name):
    value = R.try_convert_to_bool(value)
    if value is None or isinstance(value, bool):
        return value
    raise UserError(400, 'Invalid boolean: ' + name, {'param': name})


def resolve_payment_method(id):
    """Returns the PaymentMethod for `id`, cloning test ids (404 if unknown)."""
    if not isinstance(id, str):
        raise UserError(400, 'Invalid payment_method', {'param': 'payment_method'})
    return R.PaymentMethod._api_retrieve(id)


# ---------------------------------------------------------------------------------------------
# SetupIntents
# ---------------------------------------------------------------------------------------------

def attach_to_customer(seti):
    """Stripe attaches the PaymentMethod of a succeeded SetupIntent to its customer."""
    if seti.status == 'succeeded' and seti.payment_method and seti.customer:
        pm = R.PaymentMethod._api_retrieve(seti.payment_method)
        pm.customer = seti.customer


def patch_setup_intents():
    SetupIntent = R.SetupIntent
    original_confirm = SetupIntent._api_confirm.__func__

    def _api_create(cls, confirm=None, payment_method=None, description=None,
                    allowed_payment_method_types=None, **data):
        confirm = to_bool(confirm, 'confirm')
        if allowed_payment_method_types is not None and 'payment_method_types' not in data:
            data['payment_method_types'] = allowed_payment_method_types
        pm = resolve_payment_method(payment_method) if payment_method is not None else None
        if confirm and pm is None:
            raise UserError(400, 'You cannot confirm this SetupIntent because it is missing '
                                 'a payment method.', {'param': 'payment_method'})
        obj = cls(**data)
        obj.description = description
        obj.last_setup_error = None
        if pm is not None:
            obj.payment_method = pm.id
            obj.status = 'requires_confirmation'
        if confirm:
            cls._api_confirm(obj.id, payment_method=pm.id)
        return obj

    def _api_confirm(cls, id, **kwargs):
        obj = original_confirm(cls, id, **kwargs)
        attach_to_customer(obj)
        return obj

    def _attach_pm(self, pm):
        self.payment_method = pm.id
        self.last_setup_error = None
        if pm._attaching_is_declined():
            err = card_error(ATTACH_DECLINES.get(card_number(pm), GENERIC_DECLINE), pm)
            self.status = 'requires_payment_method'
            self.next_action = None
            self.payment_method = None
            self.last_setup_error = err
            raise_card_error(err, setup_intent=self._export())
        elif pm._requires_authentication():
            self.status = 'requires_action'
            self.next_action = {'type': 'use_stripe_sdk',
                                'use_stripe_sdk': {'type': 'three_d_secure_redirect',
                                                   'stripe_js': ''}}
        else:
            self.status = 'succeeded'
            self.next_action = None

    def _api_authenticate(cls, id, client_secret=None, success=False, **kwargs):
        if kwargs:
            raise UserError(400, 'Unexpected ' + ', '.join(kwargs.keys()))
        success = to_bool(success, 'success')
        if not isinstance(client_secret, str):
            raise UserError(400, 'Missing client_secret', {'param': 'client_secret'})
        obj = cls._api_retrieve(id)
        if client_secret != obj.client_secret:
            raise UserError(401, 'Unauthorized')
        if obj.status != 'requires_action':
            raise UserError(400, 'SetupIntent status is ' + obj.status + ', not requires_action')
        obj.next_action = None
        if success:
            obj.status = 'succeeded'
            attach_to_customer(obj)
        else:
            pm = R.PaymentMethod._api_retrieve(obj.payment_method)
            obj.status = 'requires_payment_method'
            obj.payment_method = None
            obj.last_setup_error = {
                'type': 'invalid_request_error',
                'code': 'setup_intent_authentication_failure',
                'message': 'The latest attempt to set up the payment method has failed '
                           'because authentication failed.',
                'payment_method': pm._export(),
            }
        return obj

    SetupIntent._api_create = classmethod(_api_create)
    SetupIntent._api_confirm = classmethod(_api_confirm)
    SetupIntent._api_authenticate = classmethod(_api_authenticate)
    SetupIntent._attach_pm = _attach_pm


# ---------------------------------------------------------------------------------------------
# PaymentIntents
# ---------------------------------------------------------------------------------------------

def patch_payment_intents():
    PaymentIntent = R.PaymentIntent

    def _api_create(cls, confirm=None, off_session=None, description=None,
                    allowed_payment_method_types=None, **data):
        confirm = to_bool(confirm, 'confirm')
        if off_session in ('one_off', 'recurring'):
            off_session = True
        off_session = to_bool(off_session, 'off_session')
        if off_session is not None and confirm is not True:
            raise UserError(400, 'off_session can only be used with confirm=true',
                            {'param': 'off_session'})
        if allowed_payment_method_types is not None and 'payment_method_types' not in data:
            data['payment_method_types'] = allowed_payment_method_types
        if data.get('payment_method') is not None:
            # Clone a test id once, so the intent and its charge refer to one real pm_….
            data['payment_method'] = resolve_payment_method(data['payment_method']).id
        obj = cls(**data)
        obj.description = description
        obj.payment_method_types = data.get('payment_method_types') or ['card']
        obj._off_session = bool(off_session)
        obj._last_error = None
        if confirm:
            obj._confirm(on_failure_now=obj._report_failure)
        return obj

    def _confirm(self, on_failure_now):
        self._authentication_failed = False
        self._last_error = None
        pm = R.PaymentMethod._api_retrieve(self.payment_method)
        if pm._requires_authentication():
            if getattr(self, '_off_session', False):
                # The customer is not there to authenticate: Stripe declines.
                self._last_error = card_error(AUTHENTICATION_REQUIRED, pm)
                self.payment_method = None
                R.schedule_webhook(R.Event('payment_intent.payment_failed', self))
                raise_card_error(self._last_error, payment_intent=self._export())
            self.next_action = {'type': 'use_stripe_sdk',
                                'use_stripe_sdk': {'type': 'three_d_secure_redirect',
                                                   'stripe_js': ''}}
        else:
            self._create_charge(on_failure_now=on_failure_now)

    def last_payment_error(self):
        if getattr(self, '_last_error', None):
            return self._last_error
        if self._authentication_failed:
            return {
                'type': 'invalid_request_error',
                'code': 'payment_intent_authentication_failure',
                'message': 'The provided PaymentMethod has failed authentication. You can '
                           'provide payment_method_data or a new PaymentMethod to attempt '
                           'to fulfill this PaymentIntent again.',
            }
        charge = self.latest_charge
        if charge is not None and charge.status == 'failed':
            try:
                pm = R.PaymentMethod._api_retrieve(charge.payment_method)
            except UserError:
                pm = None
            number = card_number(pm)
            decline = (CHARGE_DECLINES.get(number) or ATTACH_DECLINES.get(number)
                       or GENERIC_DECLINE)
            return card_error(decline, pm, charge=charge.id)
        return None

    def _report_failure(self):
        R.schedule_webhook(R.Event('payment_intent.payment_failed', self))
        if self.invoice:
            R.Invoice._api_retrieve(self.invoice)._on_payment_failure_now()
        raise_card_error(self.last_payment_error, payment_intent=self._export())

    original_cancel = PaymentIntent._api_cancel.__func__

    def _api_cancel(cls, id, **kwargs):
        obj = cls._api_retrieve(id)
        if obj.status not in ('requires_payment_method', 'requires_capture',
                              'requires_confirmation', 'requires_action'):
            raise UserError(400, 'You cannot cancel this PaymentIntent because it has a '
                                 'status of %s.' % obj.status,
                            {'code': 'payment_intent_unexpected_state'})
        return original_cancel(cls, id, **kwargs)

    PaymentIntent._api_create = classmethod(_api_create)
    PaymentIntent._api_cancel = classmethod(_api_cancel)
    PaymentIntent._confirm = _confirm
    PaymentIntent._report_failure = _report_failure
    PaymentIntent.last_payment_error = property(last_payment_error)


# ---------------------------------------------------------------------------------------------
# Products and Prices
# ---------------------------------------------------------------------------------------------

PRICE_INTERVALS = ('day', 'week', 'month', 'year')


def as_list(value, name):
    """`lookup_keys[]=a` or `lookup_keys[0]=a` (unflattened to a list or a dict)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [value[k] for k in sorted(value, key=int)]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise UserError(400, 'Invalid array', {'param': name})


class Price(R.StripeObject):
    object = 'price'
    _id_prefix = 'price_'

    def __init__(self, product=None, currency=None, unit_amount=None, recurring=None,
                 lookup_key=None, transfer_lookup_key=None, nickname=None, active=True,
                 metadata=None, **kwargs):
        if kwargs:
            raise UserError(400, 'Unexpected ' + ', '.join(kwargs.keys()))
        active = to_bool(active, 'active')
        transfer = to_bool(transfer_lookup_key, 'transfer_lookup_key')
        if not isinstance(product, str) or not product:
            raise UserError(400, 'Missing required param: product.', {'param': 'product'})
        R.Product._api_retrieve(product)  # 404 for an unknown product, as Stripe
        if not isinstance(currency, str) or len(currency) != 3:
            raise UserError(400, 'Invalid currency', {'param': 'currency'})
        try:
            unit_amount = int(unit_amount)
            assert unit_amount >= 0
        except (TypeError, ValueError, AssertionError):
            raise UserError(400, 'Invalid non-negative integer', {'param': 'unit_amount'})
        if recurring is not None:
            if not isinstance(recurring, dict) or recurring.get('interval') not in PRICE_INTERVALS:
                raise UserError(400, 'Invalid recurring[interval]',
                                {'param': 'recurring[interval]'})
            try:
                count = int(recurring.get('interval_count', 1))
                assert count >= 1
            except (TypeError, ValueError, AssertionError):
                raise UserError(400, 'Invalid recurring[interval_count]',
                                {'param': 'recurring[interval_count]'})
            recurring = {'interval': recurring['interval'], 'interval_count': count,
                         'usage_type': 'licensed', 'meter': None, 'trial_period_days': None}
        if lookup_key is not None and not isinstance(lookup_key, str):
            raise UserError(400, 'Invalid lookup_key', {'param': 'lookup_key'})
        holder = Price._holding(lookup_key)
        if holder is not None and not transfer:
            raise UserError(400, 'A price (`%s`) already uses that lookup key.' % holder.id,
                            {'param': 'lookup_key'})

        # All exceptions must be raised before this point.
        super().__init__()
        if holder is not None:
            holder.lookup_key = None
        self.product = product
        self.currency = currency.lower()
        self.unit_amount = unit_amount
        self.unit_amount_decimal = str(unit_amount)
        self.recurring = recurring
        self.type = 'recurring' if recurring is not None else 'one_time'
        self.billing_scheme = 'per_unit'
        self.lookup_key = lookup_key
        self.nickname = nickname
        self.active = active
        self.metadata = metadata or {}

    @staticmethod
    def _holding(lookup_key):
        if lookup_key is None:
            return None
        for key, value in R.store.items():
            if key.startswith('price:') and value.lookup_key == lookup_key:
                return value
        return None

    @classmethod
    def _api_update(cls, id, active=None, nickname=None, metadata=None, lookup_key=None,
                    transfer_lookup_key=None, **kwargs):
        if kwargs:
            raise UserError(400, 'Unexpected ' + ', '.join(kwargs.keys()) +
                            ' (a price\'s amount, currency and interval never change)')
        obj = cls._api_retrieve(id)
        transfer = to_bool(transfer_lookup_key, 'transfer_lookup_key')
        if lookup_key is not None:
            holder = cls._holding(lookup_key)
            if holder is not None and holder is not obj and not transfer:
                raise UserError(400, 'A price (`%s`) already uses that lookup key.' % holder.id,
                                {'param': 'lookup_key'})
            if holder is not None and holder is not obj:
                holder.lookup_key = None
            obj.lookup_key = lookup_key
        if active is not None:
            obj.active = to_bool(active, 'active')
        if nickname is not None:
            obj.nickname = nickname
        if metadata:
            obj.metadata.update(metadata)
        return obj

    @classmethod
    def _api_list_all(cls, url, lookup_keys=None, product=None, active=None, limit=None,
                      starting_after=None, **kwargs):
        if kwargs:
            raise UserError(400, 'Unexpected ' + ', '.join(kwargs.keys()))
        keys = as_list(lookup_keys, 'lookup_keys')
        active = None if active is None else to_bool(active, 'active')
        li = super(Price, cls)._api_list_all(url, limit=limit, starting_after=starting_after)
        li._list = [p for p in li._list
                    if (keys is None or p.lookup_key in keys)
                    and (product is None or p.product == product)
                    and (active is None or p.active == active)]
        return li


def patch_products():
    Product = R.Product
    original_create = Product._api_create.__func__

    def _api_create(cls, id=None, **data):
        if id is not None and ('product:' + str(id)) in R.store:
            raise UserError(400, 'Product already exists.',
                            {'code': 'resource_already_exists', 'param': 'id'})
        return original_create(cls, id=id, **data)

    Product._api_create = classmethod(_api_create)


def fix_product(product):
    product.setdefault('images', [])
    product.setdefault('marketing_features', [])
    product.setdefault('updated', product.get('created'))
    for key in ('default_price', 'package_dimensions', 'tax_code', 'unit_label'):
        product.setdefault(key, None)


def fix_price(price):
    for key in ('custom_unit_amount', 'tax_behavior', 'tiers_mode', 'transform_quantity'):
        price.setdefault(key, None)


# ---------------------------------------------------------------------------------------------
# Response completion
# ---------------------------------------------------------------------------------------------

def fix_payment_intent(pi):
    status = pi.get('status')
    amount = pi.get('amount') or 0
    pi.setdefault('amount_received', amount if status == 'succeeded' else 0)
    pi.setdefault('amount_capturable', amount if status == 'requires_capture' else 0)
    pi.setdefault('confirmation_method', 'automatic')
    if not pi.get('payment_method_types'):
        pi['payment_method_types'] = ['card']
    if pi.get('metadata') is None:
        pi['metadata'] = {}
    pi.setdefault('description', None)
    charge = pi.get('latest_charge')
    if isinstance(charge, dict):
        pi['latest_charge'] = charge.get('id')
    pi.pop('charges', None)


def fix_setup_intent(seti):
    if not seti.get('payment_method_types'):
        seti['payment_method_types'] = ['card']
    seti.setdefault('usage', 'off_session')
    seti.setdefault('last_setup_error', None)
    seti.setdefault('description', None)


def fix_payment_method(pm):
    if pm.get('billing_details') is None:
        pm['billing_details'] = {}
    card = pm.get('card')
    if isinstance(card, dict):
        card.setdefault('funding', 'credit')


FIXERS = {
    'payment_intent': fix_payment_intent,
    'setup_intent': fix_setup_intent,
    'payment_method': fix_payment_method,
    'product': fix_product,
    'price': fix_price,
}


def complete(value):
    """Fills in, recursively, the fields async-stripe requires."""
    if isinstance(value, list):
        for item in value:
            complete(item)
    elif isinstance(value, dict):
        for item in list(value.values()):
            complete(item)
        fixer = FIXERS.get(value.get('object'))
        if fixer is not None:
            fixer(value)


def stripe_error(status, type_, message, **extra):
    body = {'error': dict(type=type_, message=message, **extra)}
    return S.json_response(body, status=status)


@web.middleware
async def completion_middleware(request, handler):
    """Completes JSON bodies and turns non-JSON failures into Stripe error bodies."""
    try:
        response = await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return stripe_error(e.status, 'invalid_request_error',
                            'Unrecognized request URL (%s: %s).' % (request.method, request.path))
    except Exception as e:  # a localstripe bug: say so in Stripe's shape
        log.exception('localstripe failed on %s %s', request.method, request.path)
        return stripe_error(500, 'api_error', 'localstripe internal error: %r' % (e,))

    if not isinstance(response, web.Response) or response.content_type != 'application/json':
        if response.status >= 400 and request.path.startswith('/v1/'):
            return stripe_error(response.status, 'invalid_request_error',
                                response.text or response.reason)
        return response
    try:
        data = json.loads(response.body)
    except (TypeError, ValueError):
        return response

    complete(data)
    if response.status >= 400 and isinstance(data, dict):
        error = data.setdefault('error', {})
        if response.status >= 500:
            error.setdefault('type', 'api_error')
        error.setdefault('type', 'invalid_request_error')
        if response.status == 404:
            error.setdefault('code', 'resource_missing')
    return S.json_response(data, status=response.status)


# ---------------------------------------------------------------------------------------------
# Idempotency
# ---------------------------------------------------------------------------------------------

_idempotency_lock = asyncio.Lock()
UNSAVED_STATUSES = {401, 409, 429}


@web.middleware
async def idempotency_middleware(request, handler):
    key = request.headers.get('Idempotency-Key')
    if request.method != 'POST' or not key:
        return await handler(request)

    body = await request.read()  # cached by aiohttp; handlers can read it again
    auth = request.headers.get('Authorization', '')
    store_key = 'idempotency:' + hashlib.sha256(
        (auth + '\0' + key).encode('utf-8')).hexdigest()
    fingerprint = hashlib.sha256(
        b'\0'.join([request.method.encode(), request.path_qs.encode(), body])).hexdigest()

    async with _idempotency_lock:
        saved = R.store.get(store_key)
        if saved is not None:
            if saved['fingerprint'] != fingerprint:
                return stripe_error(
                    400, 'idempotency_error',
                    'Keys for idempotent requests can only be used with the same parameters '
                    'they were first used with. Try using a key other than %r if you meant '
                    'to execute a different request.' % key)
            return web.Response(status=saved['status'], body=saved['body'],
                                content_type=saved['content_type'],
                                headers={'Idempotent-Replayed': 'true',
                                         'Idempotency-Key': key})

        response = await handler(request)
        if (isinstance(response, web.Response) and response.status < 500
                and response.status not in UNSAVED_STATUSES and response.body is not None):
            R.store[store_key] = {
                'fingerprint': fingerprint,
                'status': response.status,
                'body': bytes(response.body),
                'content_type': response.content_type,
            }
        response.headers['Idempotency-Key'] = key
        return response


# ---------------------------------------------------------------------------------------------
# Application
# ---------------------------------------------------------------------------------------------

LAUNCHER_SHA256 = hashlib.sha256(open(os.path.abspath(__file__), 'rb').read()).hexdigest()


async def launcher(request):
    return S.json_response({'sha256': LAUNCHER_SHA256})


def build_app():
    """A new aiohttp app: our middlewares and routes first, then localstripe's routes.

    localstripe registers its extra routes with the functions themselves (captured at import),
    so a patched classmethod only takes effect on a route registered again here.
    """
    app = web.Application(middlewares=[idempotency_middleware, completion_middleware,
                                       S.error_middleware, S.auth_middleware,
                                       S.save_store_middleware])
    app.on_response_prepare.append(S.add_cors_headers)

    overrides = {
        ('POST', '/v1/setup_intents/{id}/confirm'): R.SetupIntent._api_confirm,
        ('POST', '/v1/setup_intents/{id}/_authenticate'): R.SetupIntent._api_authenticate,
        ('POST', '/v1/payment_intents/{id}/cancel'): R.PaymentIntent._api_cancel,
    }
    for (method, url), func in overrides.items():
        app.router.add_route(method, url, S.api_extra(func, url))
    app.router.add_get('/_config/launcher', launcher)
    for method, url, func in (
            ('POST', '/v1/prices', S.api_create),
            ('GET', '/v1/prices/{id}', S.api_retrieve),
            ('POST', '/v1/prices/{id}', S.api_update),
            ('GET', '/v1/prices', S.api_list_all)):
        app.router.add_route(method, url, func(Price, url))
    for route in S.app.router.routes():
        url = route.resource.canonical
        if (route.method, url) in overrides:
            continue
        app.router.add_route(route.method, url, route.handler)
    return app


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--host', default='127.0.0.1',
                        help='loopback address to listen on (default 127.0.0.1)')
    parser.add_argument('--port', type=int, default=8420, help='default 8420')
    parser.add_argument('--state', help='pickle file holding the fake Stripe state '
                        '(default $TMPDIR/tollgate-localstripe-<port>.pickle)')
    parser.add_argument('--from-scratch', action='store_true',
                        help='ignore an existing state file')
    args = parser.parse_args()

    host = args.host
    try:
        loopback = host == 'localhost' or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        parser.error('--host must be a loopback address (127.0.0.1, ::1 or localhost)')

    state = args.state or os.path.join(tempfile.gettempdir(),
                                       'tollgate-localstripe-%d.pickle' % args.port)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(message)s')

    patch_state_path(state)
    patch_payment_methods()
    patch_setup_intents()
    patch_payment_intents()
    patch_products()

    if not args.from_scratch:
        R.store.try_load_from_disk()
    log.info('state file: %s', state)

    web.run_app(build_app(), host=host, port=args.port,
                access_log=logging.getLogger('aiohttp.access'),
                print=lambda msg: log.info('%s', msg))


if __name__ == '__main__':
    main()
