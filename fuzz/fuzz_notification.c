/* fuzz_notification.c: notification_parse on arbitrary bytes, with tight limits and a selection
 * whose rules walk members, array elements and strings holding JSON. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "notification.h"
#include "select.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const rules[] = {
    "/settings/model in viduq1 vidu2.0",
    "/payload/upscale = true",
    "/payload/a/0/b !exists",
    "/creations/0/grade exists",
    "/~0/~1 != x",
};

static const struct selection *selection(void)
{
        static struct selection sel;
        static int made;
        const char *why;
        if (made)
                return &sel;
        sel.rules = calloc(sizeof(rules) / sizeof(rules[0]), sizeof(*sel.rules));
        if (!sel.rules ||
            select_types_parse(SELECT_DEFAULT_TASK_TYPES, &sel.task_types, &why) < 0 ||
            select_types_parse(SELECT_DEFAULT_CREATION_TYPES, &sel.creation_types, &why) < 0)
                abort();
        for (size_t i = 0; i < sizeof(rules) / sizeof(rules[0]); i++)
                if (select_rule_parse(rules[i], &sel.rules[sel.n_rules++], &why) < 0)
                        abort();
        made = 1;
        return &sel;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct notification_limits lim = {.max_depth = 16, .max_tasks = 64, .max_creations = 256};
        struct notification *n = NULL;
        const char *why = NULL;
        /* Every other input with the selection, so both paths stay covered. */
        lim.select = size % 2 ? selection() : NULL;
        if (notification_parse((const char *)data, size, &lim, &n, &why) >= 0) {
                for (size_t i = 0; i < n->n_tasks; i++) {
                        (void)note_task_succeeded(&n->tasks[i]);
                        (void)note_task_failed(&n->tasks[i]);
                }
                notification_free(n);
        }
        return 0;
}
