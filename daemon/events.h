/* events.h: the sender of outcome events ([events]): takes due events from the ledger's outbox,
 * signs them (Standard Webhooks) and POSTs them on the loop, and records each attempt's outcome
 * through the shared turn. */
#pragma once

#include <systemd/sd-event.h>

#include "config.h"
#include "ledger.h"
#include "metrics.h"
#include "txn.h"

struct events;

/* Also tells the ledger which transitions write an event (cfg's events.types, none without
 * events.url). */
int events_new(sd_event *event, struct ledger *ledger, struct txn *txn, const struct config *cfg,
               struct metrics *metrics, struct events **ret);
/* The same on PostgreSQL, through the turns of txn (txn_new_pg): the events are written by the
 * schema's trigger, and this instance's events.types is written for every instance
 * (meta 'event_states') when it has [events]. */
int events_new_pg(sd_event *event, struct txn *txn, const struct config *cfg,
                  struct metrics *metrics, struct events **ret);
/* Deliveries in flight are abandoned: their events stay pending and go again at the next start,
 * with the same webhook-id. */
struct events *events_free(struct events *e);

/* The configuration changed (reload); the pointer stays owned by the caller. */
void events_set_config(struct events *e, const struct config *cfg);
/* Events may have become due from outside (an operator's retry): look soon. */
void events_kick(struct events *e);
