/* webhook.h: the notification endpoint: verifies the sender, parses the body, stages its rows,
 * and answers once the loop's shared transaction (txn.h) has made them durable. */
#pragma once

#include <stdbool.h>
#include <systemd/sd-event.h>

#include "config.h"
#include "dispatcher.h"
#include "http.h"
#include "ledger.h"
#include "metrics.h"
#include "txn.h"

struct webhook;

int webhook_new(sd_event *event, struct ledger *ledger, struct txn *txn, const struct config *cfg,
                struct metrics *metrics, struct dispatcher *dispatcher, struct webhook **ret);
/* On PostgreSQL (store.backend): turns go through txn's batches (txn_new_pg); no dispatcher
 * yet. Refuses notifications (503) until webhook_set_available. */
int webhook_new_pg(sd_event *event, struct txn *txn, const struct config *cfg,
                   struct metrics *metrics, struct dispatcher *dispatcher, struct webhook **ret);
/* PostgreSQL: whether the database is there (connected, schema migrated). */
void webhook_set_available(struct webhook *w, bool available);
struct webhook *webhook_free(struct webhook *w);
void webhook_set_config(struct webhook *w, const struct config *cfg);

/* The http_handlers.webhook callback. */
void webhook_handle(struct http_request *req, void *userdata);

/* False after a commit failed and until the ledger takes a write again; on PostgreSQL, while
 * the database is not available. */
bool webhook_ledger_ok(const struct webhook *w);
/* Requests staged and not yet committed. */
size_t webhook_staged(const struct webhook *w);
