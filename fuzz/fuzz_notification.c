/* fuzz_notification.c: notification_parse on arbitrary bytes, with tight limits. */
#include <stddef.h>
#include <stdint.h>

#include "notification.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct notification_limits lim = {.max_depth = 16, .max_tasks = 64, .max_creations = 256};
        struct notification *n = NULL;
        const char *why = NULL;
        if (notification_parse((const char *)data, size, &lim, &n, &why) >= 0) {
                for (size_t i = 0; i < n->n_tasks; i++) {
                        (void)note_task_succeeded(&n->tasks[i]);
                        (void)note_task_failed(&n->tasks[i]);
                }
                notification_free(n);
        }
        return 0;
}
