"""Starts localstripe 1.15.10 for accrue's tests, patched at start-up (not forked) so that it
behaves like the parts of real Stripe accrue relies on.

Usage: python launch.py PORT

It exits when the process that started it does (a test binary has no chance to stop it).

Patches (each closes a gap found by driving it with async-stripe 1.0.0-rc.10):
- binds 127.0.0.1 only and keeps no state file (the CLI binds every interface and pickles its
  store to /tmp/localstripe.pickle after every write);
- one-off invoices: `POST /v1/invoices` for a customer without a subscription creates a draft
  (it answered 404), invoice items created with `invoice=` join that draft's lines, and
  `POST /v1/invoices/{id}/finalize` exists;
- a declined charge while paying an invoice answers 402 `card_declined` and emits
  `invoice.payment_failed`, as Stripe does (it answered 200 and left the invoice open silently);
- `Idempotency-Key` is honoured: the first answer to a key (success or error) is replayed for
  every later request with that key for 24 hours, then forgotten, as Stripe does. Tests that
  move time with a test clock move the fake's time too, per key namespace (accrue prefixes
  every key with its installation): `POST /_accrue/advance` with `prefix` and `seconds` ages
  the keys starting with `prefix` by that much;
- exported objects gain the fields of the current API version that async-stripe 1.0 requires.
"""

import asyncio
import logging
import os
import re
import socket
import sys

from aiohttp import web

from localstripe import resources, server
from localstripe.resources import store
from localstripe.errors import UserError
from localstripe.resources import (Customer, Event, Invoice, InvoiceItem,
                                   InvoiceLineItem, PaymentIntent,
                                   schedule_webhook)

# --- no state file -----------------------------------------------------------------------------
resources.Store.dump_to_disk = lambda self: None
resources.Store.try_load_from_disk = lambda self: None


# --- one-off invoices --------------------------------------------------------------------------
_original_invoice_create = Invoice._api_create.__func__


def _invoice_create(cls, customer=None, subscription=None, description=None,
                    metadata=None, currency=None, auto_advance=None,
                    collection_method=None, pending_invoice_items_behavior=None,
                    **kwargs):
    if subscription is not None:
        return _original_invoice_create(cls, customer=customer,
                                        subscription=subscription,
                                        description=description,
                                        metadata=metadata, **kwargs)
    if kwargs:
        raise UserError(400, 'Unexpected ' + ', '.join(kwargs.keys()))
    if not isinstance(customer, str) or not customer.startswith('cus_'):
        raise UserError(400, 'Bad request: customer')
    Customer._api_retrieve(customer)
    invoice = cls(customer=customer, description=description,
                  metadata=metadata)
    if pending_invoice_items_behavior == 'exclude':
        for line in list(invoice.lines._list):
            item = InvoiceItem._api_retrieve(line.invoice_item)
            item.invoice = None
        invoice.lines._list = []
    if currency is not None:
        invoice.currency = currency
    return invoice


Invoice._api_create = classmethod(_invoice_create)

_original_item_init = InvoiceItem.__init__


def _item_init(self, *args, **kwargs):
    _original_item_init(self, *args, **kwargs)
    if self.invoice is not None:
        invoice = Invoice._api_retrieve(self.invoice)
        if invoice.status != 'draft':
            raise UserError(400, 'Invoice is not a draft')
        if not invoice.lines._list:
            invoice.currency = self.currency
        invoice.lines._list.append(InvoiceLineItem(self))


InvoiceItem.__init__ = _item_init


def _finalize_invoice(id, auto_advance=None, **kwargs):
    invoice = Invoice._api_retrieve(id)
    if invoice.status != 'draft':
        raise UserError(400, 'This invoice is already finalized')
    invoice._finalize()
    return invoice


# --- declined payments -------------------------------------------------------------------------
# The pay route was bound to the original function when localstripe was imported, so the
# answer is corrected around it.
_PAY = re.compile(r'^/v1/invoices/([^/]+)/pay$')


@web.middleware
async def declined_payment_middleware(request, handler):
    match = _PAY.match(request.path) if request.method == 'POST' else None
    if match is None:
        return await handler(request)
    try:
        before = Invoice._api_retrieve(match.group(1)).payment_intent
    except UserError:
        before = None
    response = await handler(request)
    if response.status != 200:
        return response
    invoice = Invoice._api_retrieve(match.group(1))
    if (invoice.status == 'open' and invoice.payment_intent
            and invoice.payment_intent != before):
        pi = PaymentIntent._api_retrieve(invoice.payment_intent)
        charge = pi.latest_charge
        if charge is not None and charge.status == 'failed':
            invoice.attempt_count += 1
            schedule_webhook(Event('invoice.payment_failed', invoice))
            error = UserError(402, 'Your card was declined.')
            error.body['error'].update({
                'type': 'card_error',
                'code': charge.failure_code or 'card_declined',
                'decline_code': 'generic_decline',
                'charge': charge.id,
            })
            raise error
    return response


# --- fields of the current API version --------------------------------------------------------
def _with_defaults(cls, defaults):
    original = cls._export

    def _export(self, expand=None):
        obj = original(self, expand=expand)
        for key, value in defaults(self, obj).items():
            if obj.get(key) is None:
                obj[key] = value
        return obj

    cls._export = _export


_with_defaults(Invoice, lambda self, o: {
    'amount_overpaid': 0,
    'amount_remaining': max(0, (o.get('amount_due') or 0) - (o.get('amount_paid') or 0)),
    'amount_shipping': 0,
    'automatic_tax': {'enabled': False, 'disabled_reason': None, 'liability': None,
                      'provider': None, 'status': None},
    'default_tax_rates': [],
    'discounts': [],
    'issuer': {'type': 'self'},
    'payment_settings': {'default_mandate': None, 'payment_method_options': None,
                         'payment_method_types': None},
    'post_payment_credit_notes_amount': 0,
    'pre_payment_credit_notes_amount': 0,
    'period_start': o.get('created'),
    'period_end': o.get('created'),
    'starting_balance': 0,
})
_line_defaults = lambda self, o: {  # noqa: E731
    'discountable': True,
    'discounts': [],
    'metadata': {},
    'quantity_decimal': str(o.get('quantity') or 1),
    'subtotal': o.get('amount') or 0,
}
_with_defaults(InvoiceLineItem, _line_defaults)
_with_defaults(InvoiceItem, _line_defaults)
_with_defaults(Event, lambda self, o: {'pending_webhooks': 0})
# The objects above are rendered for the current API version; say so.
_original_event_init = Event.__init__


def _event_init(self, *args, **kwargs):
    _original_event_init(self, *args, **kwargs)
    self.api_version = '2026-09-30.endive'


Event.__init__ = _event_init


# --- idempotency keys --------------------------------------------------------------------------
import time

_replies = {}
_offsets = {}  # key prefix -> seconds its keys' time runs ahead of the wall clock
KEY_LIFETIME = 24 * 3600


def _key_time(key):
    return time.time() + sum(s for p, s in _offsets.items() if key.startswith(p))


async def _advance(request):
    form = await request.post()
    prefix = form.get('prefix', '')
    if not prefix:
        return web.json_response({'error': {'message': 'prefix is required'}}, status=400)
    _offsets[prefix] = _offsets.get(prefix, 0) + float(form.get('seconds', '0'))
    return web.json_response({'prefix': prefix, 'offset': _offsets[prefix]})


async def _forget(request):
    """Drops an object, as if Stripe no longer had it (the operator switched Stripe accounts,
    or an invoice was removed): reads of it answer 404 from then on."""
    key = request.match_info['object'] + ':' + request.match_info['id']
    if key not in store:
        return web.json_response({'error': {'message': 'no such object'}}, status=404)
    del store[key]
    return web.json_response({'forgotten': key})


@web.middleware
async def idempotency_middleware(request, handler):
    key = request.headers.get('Idempotency-Key')
    if request.method != 'POST' or not key:
        return await handler(request)
    scope = (request.headers.get('Authorization', ''), key)
    if scope in _replies and _key_time(key) - _replies[scope][3] > KEY_LIFETIME:
        del _replies[scope]
    if scope in _replies:
        path, status, body, _ = _replies[scope]
        if path != request.path:
            return web.json_response(
                {'error': {'type': 'idempotency_error',
                           'message': 'Keys for idempotent requests can only '
                                      'be used for the same endpoint'}},
                status=400)
        return web.Response(status=status, body=body,
                            content_type='application/json',
                            headers={'Idempotent-Replayed': 'true'})
    try:
        response = await handler(request)
    except UserError as e:
        response = e.to_response()
    if response.status < 500:
        _replies[scope] = (request.path, response.status, response.body, _key_time(key))
    return response


async def _exit_with_parent(app):
    parent = os.getppid()

    async def watch():
        while os.getppid() == parent:
            await asyncio.sleep(0.5)
        os._exit(0)

    app['parent_watch'] = asyncio.ensure_future(watch())


def main():
    port = int(sys.argv[1])
    app = server.app
    app.on_startup.append(_exit_with_parent)
    app.middlewares.append(idempotency_middleware)
    app.middlewares.append(declined_payment_middleware)
    app.router.add_route('POST', '/_accrue/advance', _advance)
    app.router.add_route('POST', '/_accrue/forget/{object}/{id}', _forget)
    app.router.add_route('POST', '/v1/invoices/{id}/finalize',
                         server.api_extra(_finalize_invoice,
                                          '/v1/invoices/{id}/finalize'))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(('127.0.0.1', port))
    logging.basicConfig(level=logging.WARNING)
    web.run_app(app, sock=sock, access_log=None, print=None)


if __name__ == '__main__':
    main()
